"""Quality against KV-cache bytes: every conversion method at every KV budget, from one MHA
checkpoint, right after conversion and after the same uptraining for all.

    python -m wgqa_jax.pareto --config=configs/llama_uptrain.py:tiny \
        --config.model.init_from=MHA_RUN/final --config.data.tokenizer=MHA_RUN/spm.model \
        --methods=mean,wgqa,aligned,svd --budgets=1/2,1/4,1/8 --steps=100 --out=/tmp/pareto
    python -m wgqa_jax.pareto --config=configs/tiny.py --pretrain_steps=1000 --out=/tmp/pareto_t5

--config and --config.SECTION.KEY=VALUE overrides work as in wgqa_jax.train and apply to every
run. A budget is the share of the MHA model's KV heads kept in every grouped module (1/4 of 8
heads: G = 2), or in all of them together. Methods: mean (GQA mean-pooling), wgqa, aligned,
svd, search (calibrated merges), allocated (svd with the budget's heads spread over the
modules by calibration error: per-module G, the same bytes), or any other variant that takes
kv_heads. The MHA model itself is uptrained the same way as the
reference point.

Every run's workdir is OUT/<method>_kv<G> (OUT/mha): held-out eval at step 0 is the quality
right after conversion, at --steps after uptraining. OUT/results.md, results.json and
pareto.png: quality against KV-cache bytes per token, a column per method, the points off the
frontier marked. Re-running resumes: finished runs are read back, partial ones continue.
"""
from __future__ import annotations

import dataclasses
import fractions
import os
import sys
import time

from absl import flags
from ml_collections import config_flags
import numpy as np

from wgqa_jax import (calibrated_merge, cli, corpora, decoding, kv_merge, model_source, streaming,
                      sweep, train, variants, workdir as workdir_lib)
from wgqa_jax.train_config import validate

# method name -> its grouping section (any other name: the variant of that name)
METHODS = {"mean": {"variant": "gqa"},
           # svd with the budget spread over modules by calibration error (wgqa_jax.kv_budget)
           "allocated": {"variant": "svd", "layer_budget": "proxy"}}
NOT_BUDGETED = ("mha", "mqa", "asymgqa")  # variants that fix G themselves

FLAGS = cli.flag_set()
_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file",
                                          lock_config=True, flag_values=FLAGS)
flags.DEFINE_list("methods", "mean,wgqa,aligned,svd", "conversion methods", flag_values=FLAGS)
flags.DEFINE_list("budgets", "1/2,1/4,1/8", "KV-head budgets, shares of the MHA heads",
                  flag_values=FLAGS)
flags.DEFINE_integer("steps", 100, "uptraining steps per point (>= 1; step 0 is the conversion)",
                     flag_values=FLAGS)
flags.DEFINE_integer("pretrain_steps", 0, "train a random MHA this long first (0: use "
                     "config.model.init_from)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "results directory", flag_values=FLAGS)


# method -> the merge whose calibration error (calibrated_merge.proxy_error) scores it
PROXY_MERGE = {"mha": "mean", "mean": "mean", "gqa": "mean", "aligned": "aligned", "svd": "svd",
               "search": "search", "allocated": "svd"}


@dataclasses.dataclass
class Point:
  method: str
  kv_heads: int
  budget: str
  bytes_per_token: int
  at_conversion: dict
  after: dict
  workdir: str
  proxy: float | None = None  # calibration error of the merge, mean over cached modules


def proxies(points: list[Point], init_from: str) -> None:
  """Each point's calibration error (its merge's, on the MHA model's calibration statistics
  from any calibrated run), where the method has one; sets Point.proxy."""
  from wgqa_jax import calibration, kv_budget
  stats_file = next((os.path.join(p.workdir, calibration.FILE) for p in points
                     if os.path.exists(os.path.join(p.workdir, calibration.FILE))), None)
  if stats_file is None:
    return
  reader = streaming.open_source(init_from)
  cfg = reader.cfg
  stats = calibration.load(stats_file, cfg)
  scored = {i: (PROXY_MERGE[p.method], streaming.open_source(os.path.join(p.workdir, "final")).cfg)
            for i, p in enumerate(points) if p.method in PROXY_MERGE}
  errors = {i: [] for i in scored}
  for path in kv_budget.cached_modules(cfg):  # one module in memory at a time
    module = {n: np.asarray(reader.read(path + (n,)), np.float64) for n in "qkvo"}
    for i, (merge, grouped) in scored.items():
      index = kv_merge.kv_index(cfg.num_heads, grouped.kv_heads_at(path))
      errors[i].append(calibrated_merge.proxy_error(merge, module, stats.gram(path), index,
                                                    cfg.rotary_keys, cfg.reorderable_heads(path)))
  for i, errs in errors.items():
    points[i].proxy = float(np.mean(errs))


def proxy_ranking(points: list[Point]) -> str | None:
  """How well the calibration error ranks the loss right after conversion (Spearman)."""
  from scipy import stats
  scored = [p for p in points if p.proxy is not None]
  if len(scored) < 3:
    return None
  rho, pval = stats.spearmanr([p.proxy for p in scored],
                              [p.at_conversion["loss"] for p in scored])
  return (f"Calibration error (the merge's relative K/V reconstruction error, computed without "
          f"running the model) against the loss right after conversion: Spearman rho = "
          f"{rho:.2f} (p = {pval:.2g}) over {len(scored)} points "
          f"({', '.join(sorted({p.method for p in scored}))}).")


def grouping_of(method: str) -> dict:
  """The config's grouping section of a method (without kv_heads)."""
  grouping = METHODS.get(method, {"variant": method})
  variants.get(grouping["variant"])  # unknown names fail with the closest one
  if grouping["variant"] in NOT_BUDGETED:
    raise ValueError(f"method {method!r} fixes its own KV heads; a KV budget needs one of "
                     f"mean, wgqa, aligned, svd, search, allocated or another variant that "
                     f"takes kv_heads")
  return dict(grouping)


def kv_heads_of(budget: str, num_heads: int) -> int:
  """The KV heads a budget ("1/4") leaves of num_heads: a whole divisor of num_heads."""
  try:
    share = fractions.Fraction(budget)
  except (ValueError, ZeroDivisionError):
    raise ValueError(f"budget {budget!r} is not a fraction like 1/4") from None
  g = share * num_heads
  if not 0 < share <= 1 or g.denominator != 1 or num_heads % int(g):
    choices = [str(fractions.Fraction(d, num_heads)) for d in range(1, num_heads + 1)
               if num_heads % d == 0]
    raise ValueError(f"budget {budget} of {num_heads} heads is not a whole number of KV heads "
                     f"dividing {num_heads}: choose among {choices}")
  return int(g)


def bytes_per_token(cfg, dtype: str) -> int:
  """KV-cache bytes per cached token (prompt or generated; T5: per source token of cross K/V
  and per target token of self K/V, which are the same size)."""
  return decoding.cache_bytes(cfg.replace(dtype=dtype), 1, 1, 1) // 2


def evals(row: dict) -> dict:
  """A metrics row's eval metrics, without the "eval/" prefix."""
  return {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("eval/")}


def dominated(points: list[Point], key: str) -> set[int]:
  """Indices of the points another point beats: no more bytes, no higher loss, one strictly."""
  out = set()
  for i, p in enumerate(points):
    for q in points:
      better = (q.bytes_per_token <= p.bytes_per_token and
                getattr(q, key)["loss"] <= getattr(p, key)["loss"])
      strictly = (q.bytes_per_token < p.bytes_per_token or
                  getattr(q, key)["loss"] < getattr(p, key)["loss"])
      if better and strictly:
        out.add(i)
        break
  return out


def table(points: list[Point], methods: list[str], title: str, cell) -> list[str]:
  """Rows: KV budgets (most bytes first); columns: methods; cell(index, point) -> text."""
  cells = {(p.method, p.kv_heads): cell(i, p) for i, p in enumerate(points)}
  rows = sorted({(p.kv_heads, p.budget, p.bytes_per_token) for p in points}, reverse=True)
  lines = [f"### {title}", "", "| KV heads (budget) | bytes / token | " + " | ".join(methods)
           + " |", "|---|---|" + "---|" * len(methods)]
  for g, budget, nbytes in rows:
    lines.append(f"| {g} ({budget}) | {nbytes} | "
                 + " | ".join(cells.get((m, g), "") for m in methods) + " |")
  return lines + [""]


def loss_table(points: list[Point], methods: list[str], key: str, title: str) -> list[str]:
  """Held-out loss per budget and method; `*`: on the frontier."""
  off = dominated(points, key)
  return table(points, methods, title, lambda i, p: f"{getattr(p, key)['loss']:.4f}"
               + ("" if i in off else " *"))


def plot(points: list[Point], out_png: str, steps: int) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
  methods = list(dict.fromkeys(p.method for p in points))
  for ax, key, title in ((axes[0], "at_conversion", "right after conversion"),
                         (axes[1], "after", f"after {steps} uptraining steps")):
    off = dominated(points, key)
    for n, m in enumerate(methods):
      mine = sorted((p.bytes_per_token, getattr(p, key)["loss"], i)
                    for i, p in enumerate(points) if p.method == m)
      color = f"C{n}"
      ax.plot([b for b, _, _ in mine], [l for _, l, _ in mine], "-", color=color, alpha=0.6,
              label=m)
      for b, loss, i in mine:
        ax.plot(b, loss, "o", color=color, markersize=7,
                markerfacecolor="white" if i in off else color)
    frontier = sorted((p.bytes_per_token, getattr(p, key)["loss"])
                      for i, p in enumerate(points) if i not in off)
    ax.plot([b for b, _ in frontier], [l for _, l in frontier], "k:", lw=1, label="frontier")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KV-cache bytes per token")
    ax.set_ylabel("held-out loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle("quality vs KV cache (filled: on the frontier; hollow: dominated)", fontsize=10)
  fig.tight_layout()
  fig.savefig(out_png, dpi=120)
  plt.close(fig)


def check(base, methods: list[str], budgets: list[str], args) -> tuple[object, dict]:
  """(the MHA model config, {(method, budget): kv_heads}): every bad input fails here, before
  any training."""
  if not args.out:
    raise ValueError("pass --out=DIR")
  if args.steps < 1:
    raise ValueError(f"--steps={args.steps}: at least 1 (the eval at step 0 is the quality "
                     f"right after conversion)")
  if not methods or not budgets:
    raise ValueError("pass at least one method (--methods) and one budget (--budgets)")
  if args.pretrain_steps <= 0:
    if base.model.init_from == model_source.RANDOM:
      raise ValueError("pareto converts one MHA checkpoint: pass --config.model.init_from=DIR "
                       "(or --pretrain_steps=N to train a random one first)")
    if base.data.tokenizer == "sentencepiece":
      raise ValueError("the MHA checkpoint's vocabulary is needed: pass "
                       "--config.data.tokenizer=<its run's spm.model>")
  cfg = model_source.open_source(base.model).cfg
  if not variants.is_mha(cfg):
    raise ValueError(f"{base.model.init_from} is not MHA "
                     f"({cfg.grouping.describe(cfg.num_heads)}): pareto converts an MHA model")
  heads = {}
  for m in methods:
    grouping = grouping_of(m)
    for b in budgets:
      g = kv_heads_of(b, cfg.num_heads)
      c = base.copy_and_resolve_references()
      c.grouping.update(dict(grouping, kv_heads=g))
      validate(c)
      train.check_model(c, cfg)
      heads[m, b] = g
  return cfg, heads


def main(argv: list[str] | None = None) -> int:
  args = cli.parse(FLAGS, argv, "wgqa_jax.pareto")
  base = _CONFIG.value
  if base is None:
    raise ValueError("pass --config=FILE[:ARG]")
  methods = [m.strip() for m in args.methods if m.strip()]
  budgets = [b.strip() for b in args.budgets if b.strip()]
  cfg, heads = check(base, methods, budgets, args)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  init_from, pre = sweep.mha_checkpoint(base, args.out, args.pretrain_steps)

  def run(method: str, grouping: dict, g: int, budget: str) -> Point:
    workdir = os.path.join(args.out, "mha" if method == "mha" else f"{method}_kv{g}")
    final = sweep.uptrain(base, grouping, init_from, pre, args.steps, workdir, evals=1)
    grouped = streaming.open_source(os.path.join(workdir, "final")).cfg  # as converted
    return Point(method, g, budget, bytes_per_token(grouped, base.model.dtype),
                 evals(sweep.finished(workdir, 0)), evals(final), workdir)

  points = [run("mha", dict(variant="mha"), cfg.num_heads, "1")]
  for b in budgets:
    for m in methods:
      points.append(run(m, dict(grouping_of(m), kv_heads=heads[m, b]), heads[m, b], b))
      write(points, methods, args, argv, init_from, base, time.time() - t0)
  proxies(points, init_from)
  write(points, methods, args, argv, init_from, base, time.time() - t0)
  print(open(os.path.join(args.out, "results.md")).read())
  return 0


def write(points, methods, args, argv, init_from, base, seconds) -> None:
  """results.md, results.json and pareto.png of the points so far."""
  command = " ".join(argv if argv is not None else sys.argv[1:])
  d = base.data
  what = (f"{d.objective} on {corpora.describe(d.dataset)}" if d.objective != "pairs"
          else f"pairs: {d.dataset}")
  lines = [f"# Quality vs KV cache: {', '.join(methods)}", "",
           f"Command: `python -m wgqa_jax.pareto {command}`", "",
           f"MHA checkpoint {init_from}; {what}; held-out loss (lower is better) of the same "
           f"objective; every point uptrained {args.steps} steps with one config; "
           f"{seconds:.0f} s in all. `*`: on the frontier (no point has fewer or equal bytes "
           f"and a lower loss). KV cache in {base.model.dtype}.", ""]
  lines += loss_table(points, ["mha"] + methods, "at_conversion", "Right after conversion")
  lines += loss_table(points, ["mha"] + methods, "after", f"After {args.steps} uptraining steps")
  ranking = proxy_ranking(points)
  if ranking:
    lines += table(points, ["mha"] + methods, "Calibration error of the merge (lower keeps the "
                   "heads better)", lambda i, p: "" if p.proxy is None else f"{p.proxy:.4f}")
    lines += [ranking, ""]
  extra = sorted({k for p in points for k in p.after} - {"loss", "perplexity"})
  if extra:
    lines += [f"Other metrics after {args.steps} steps:", "",
              "| method | KV heads | " + " | ".join(extra) + " |",
              "|---|---|" + "---|" * len(extra)]
    lines += [f"| {p.method} | {p.kv_heads} | " + " | ".join(
        f"{p.after.get(k, float('nan')):.2f}" for k in extra) + " |" for p in points]
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  workdir_lib.write_json(os.path.join(args.out, "results.json"), {
      "command": command, "init_from": init_from, "steps": args.steps,
      "points": [dataclasses.asdict(p) for p in points],
      "frontier_at_conversion": [i for i in range(len(points))
                                 if i not in dominated(points, "at_conversion")],
      "frontier_after": [i for i in range(len(points)) if i not in dominated(points, "after")]},
      indent=1)
  plot(points, os.path.join(args.out, "pareto.png"), args.steps)


if __name__ == "__main__":
  cli.run(main, FLAGS)
