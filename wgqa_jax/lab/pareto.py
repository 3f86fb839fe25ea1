"""Quality against KV-cache bytes: every conversion method at every KV budget, from one MHA
checkpoint, right after conversion and after the same uptraining for all (the command line:
wgqa_jax/tools/pareto.py; the report: lab/pareto_report.py).

A budget is the share of the MHA model's KV heads kept in every grouped module (1/4 of 8
heads: G = 2), or in all of them together. Methods: mean (GQA mean-pooling), wgqa, aligned,
svd, search (calibrated merges), allocated (svd with the budget's heads spread over the
modules by calibration error: per-module G, the same bytes), or any other variant that takes
kv_heads. The MHA model itself is uptrained the same way as the reference point.

Every run's workdir is OUT/<method>_kv<G> (OUT/mha): held-out eval at step 0 is the quality
right after conversion, at --steps after uptraining. Re-running resumes: finished runs are read
back, partial ones continue.
"""

from __future__ import annotations

import fractions
import os
import time

import numpy as np

from wgqa_jax import decoding
from wgqa_jax.core import workdir as workdir_lib
from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping import calibrated_merge, kv_merge, variants
from wgqa_jax.lab import pareto_report, sweep
from wgqa_jax.lab.pareto_report import Point
from wgqa_jax.models import family_of
from wgqa_jax.store.resolve import RANDOM, resolve
from wgqa_jax.training import calibration, preflight
from wgqa_jax.training.validation import validate

# method name -> its grouping section (any other name: the variant of that name)
METHODS = {
  "allocated": {"variant": "svd", "layer_budget": "proxy"},
  "mla-allocated": {"variant": "mla", "layer_budget": "proxy"},
}


def proxies(points: list[Point], init_from: str) -> None:
  """Each point's calibration error (its merge's, on the MHA model's calibration statistics
  from any calibrated run), where the method has one; sets Point.proxy."""
  stats_file = next(
    (
      os.path.join(p.workdir, workdir_lib.CALIBRATION)
      for p in points
      if os.path.exists(os.path.join(p.workdir, workdir_lib.CALIBRATION))
    ),
    None,
  )
  if stats_file is None:
    return
  reader = resolve(init_from).open_weights()
  cfg = reader.cfg
  stats = calibration.load(stats_file, cfg)
  scored = {
    i: (variant_of(p.method).proxy_merge, converted(p.workdir))
    for i, p in enumerate(points)
    if variant_of(p.method).proxy_merge
  }
  errors = {i: [] for i in scored}
  for path in cfg.cached_modules():  # one module in memory at a time
    module = {n: np.asarray(reader.read(path + (n,)), np.float64) for n in "qkvo"}
    for i, (merge, grouped) in scored.items():
      index = kv_merge.kv_index(cfg.num_heads, grouped.kv_heads_at(path))
      errors[i].append(
        calibrated_merge.proxy_error(
          merge, module, stats.gram(path), index, cfg.rotary_keys, cfg.reorderable_heads(path)
        )
      )
  for i, errs in errors.items():
    points[i].proxy = float(np.mean(errs))


def proxy_ranking(points: list[Point]) -> str | None:
  """How well the calibration error ranks the loss right after conversion (Spearman)."""
  from scipy import stats

  scored = [p for p in points if p.proxy is not None]
  if len(scored) < 3:
    return None
  rho, pval = stats.spearmanr([p.proxy for p in scored], [p.at_conversion["loss"] for p in scored])
  return (
    f"Calibration error (the merge's relative K/V reconstruction error, computed without "
    f"running the model) against the loss right after conversion: Spearman rho = "
    f"{rho:.2f} (p = {pval:.2g}) over {len(scored)} points "
    f"({', '.join(sorted({p.method for p in scored}))})."
  )


def variant_of(method: str) -> variants.Variant:
  """The variant a method converts with (unknown names fail with the closest one)."""
  return variants.get(METHODS.get(method, {"variant": method})["variant"])


def grouping_of(method: str) -> dict:
  """The config's grouping section of a method (without kv_heads), the variant by its own
  name (mean: gqa)."""
  variant = variant_of(method)
  if not variant.budgeted:
    raise UserError(
      f"method {method!r} fixes its own KV heads; a KV budget needs one of "
      f"mean, wgqa, aligned, svd, search, allocated or another variant that "
      f"takes kv_heads"
    )
  return {**METHODS.get(method, {}), "variant": variant.name}


def kv_heads_of(budget: str, num_heads: int) -> int:
  """The KV heads a budget ("1/4") leaves of num_heads: a whole divisor of num_heads."""
  try:
    share = fractions.Fraction(budget)
  except (ValueError, ZeroDivisionError):
    raise UserError(f"budget {budget!r} is not a fraction like 1/4") from None
  g = share * num_heads
  if not 0 < share <= 1 or g.denominator != 1 or num_heads % int(g):
    choices = [
      str(fractions.Fraction(d, num_heads)) for d in range(1, num_heads + 1) if num_heads % d == 0
    ]
    raise UserError(
      f"budget {budget} of {num_heads} heads is not a whole number of KV heads "
      f"dividing {num_heads}: choose among {choices}"
    )
  return int(g)


def evals(row: dict) -> dict:
  """A metrics row's eval metrics, without the "eval/" prefix."""
  return {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("eval/")}


def check(
  base, methods: list[str], budgets: list[str], steps: int, pretrain_steps: int
) -> tuple[object, dict]:
  """(the MHA model config, {(method, budget): kv_heads}): every bad input fails here, before
  any training."""
  if steps < 1:
    raise UserError(
      f"--steps={steps}: at least 1 (the eval at step 0 is the quality right after conversion)"
    )
  if not methods or not budgets:
    raise UserError("pass at least one method (--methods) and one budget (--budgets)")
  if pretrain_steps <= 0:
    if base.model.init_from == RANDOM:
      raise UserError(
        "pareto converts one MHA checkpoint: pass --config.model.init_from=DIR "
        "(or --pretrain_steps=N to train a random one first)"
      )
    if base.data.tokenizer == "sentencepiece":
      raise UserError(
        "the MHA checkpoint's vocabulary is needed: pass "
        "--config.data.tokenizer=<its run's spm.model>"
      )
  cfg = resolve(base.model.init_from, base.model.arch).cfg
  if not variants.is_mha(cfg):
    raise UserError(
      f"{base.model.init_from} is not MHA "
      f"({cfg.grouping.describe(cfg.num_heads)}): pareto converts an MHA model"
    )
  heads = {}
  for m in methods:
    grouping = grouping_of(m)
    for b in budgets:
      g = kv_heads_of(b, cfg.num_heads)
      c = base.copy_and_resolve_references()
      c.grouping.update(dict(grouping, kv_heads=g))
      validate(c)
      preflight.check_model(c, cfg)
      heads[m, b] = g
  return cfg, heads


def training_length(base, cfg) -> int:
  """The context the runs train on: a decoder-only row (input + target), T5's inputs."""
  d = base.data
  if family_of(cfg).encoder_decoder:
    return d.max_input_length
  return d.max_input_length + d.max_target_length


def converted(workdir: str):
  """The model config a point's run trained (as converted: per-module G included)."""
  return resolve(os.path.join(workdir, workdir_lib.FINAL)).cfg


def run(
  base,
  methods: list[str],
  budgets: list[str],
  steps: int,
  pretrain_steps: int,
  out: str,
  command: str,
  eval_tasks: list[str] = (),
  eval_include_path: str | None = None,
  eval_limit: int | None = None,
  eval_max_length: int | None = None,
) -> str:
  """Every point (the MHA reference, then each budget x method), the report rewritten after
  each; returns results.md. eval_tasks: lm-evaluation-harness tasks (eval_include_path: a
  folder of local ones) scored at every point's evals beside the loss (at conversion and after
  uptraining; a run that finished before they were asked for is not scored again).
  eval_max_length: the longest context they score (default: the runs' training length, a
  decoder-only row or T5's inputs: a model scored past the positions it trained on measures
  how it extrapolates, not what grouping did to it)."""
  cfg, heads = check(base, methods, budgets, steps, pretrain_steps)
  extra_eval = None
  if eval_tasks:
    from wgqa_jax.lab import harness  # lm-evaluation-harness: only when asked for

    extra_eval = harness.scorer(
      list(eval_tasks),
      eval_include_path,
      eval_limit,
      max_length=eval_max_length or training_length(base, cfg),
    )
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  init_from, pre = sweep.mha_checkpoint(base, out, pretrain_steps)

  def point(method: str, grouping: dict, g: int, budget: str) -> Point:
    workdir = os.path.join(out, "mha" if method == "mha" else f"{method}_kv{g}")
    final = sweep.uptrain(
      base, grouping, init_from, pre, steps, workdir, evals=1, extra_eval=extra_eval
    )
    return Point(
      method,
      g,
      budget,
      decoding.cache_bytes_per_token(converted(workdir).replace(dtype=base.model.dtype)),
      evals(sweep.finished(workdir, 0)),
      evals(final),
      workdir,
    )

  write = lambda ranking=None: pareto_report.write(
    points, methods, out, steps, command, init_from, base, time.time() - t0, ranking
  )
  points = [point("mha", dict(variant="mha"), cfg.num_heads, "1")]
  for b in budgets:
    for m in methods:
      points.append(point(m, dict(grouping_of(m), kv_heads=heads[m, b]), heads[m, b], b))
      write()
  proxies(points, init_from)
  write(proxy_ranking(points))
  with open(os.path.join(out, "results.md")) as f:
    return f.read()
