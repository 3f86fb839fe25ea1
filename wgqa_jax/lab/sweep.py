"""Uptrain several variants from one MHA checkpoint with the same budget; write the paper's table
(the command line: wgqa_jax/tools/sweep.py).

1. MHA checkpoint: with --pretrain_steps > 0 (the offline default) a random T5 is first trained
   as MHA on the task, standing in for a pretrained checkpoint; otherwise config.init_from is used.
2. Every variant is converted from that checkpoint and uptrained for --steps with one config.
3. results.md / results.json: eval loss and ROUGE per variant (the paper's Table I), curves.png,
   WGQA weight plots and t-tests (wgqa_jax.analysis). Re-running resumes finished/partial runs.
"""

from __future__ import annotations

import os
import shutil
import time

from wgqa_jax.core import workdir as workdir_lib
from wgqa_jax.core.errors import UserError
from wgqa_jax.data import corpora
from wgqa_jax.lab import analysis
from wgqa_jax.store.resolve import resolve
from wgqa_jax.training import preflight, trainer
from wgqa_jax.training.validation import validate

DEFAULT_VARIANTS = "mha,mqa,gqa,wgqa,randwgqa,colwgqa,simgqa,kdgqa,dgqa,pgqa"


def uptrain(
  base,
  grouping: dict,
  init_from: str,
  pretrain_dir: str | None,
  steps: int,
  workdir: str,
  evals: int = 3,
  extra_eval=None,
) -> dict:
  """Uptrain one grouping (the config's grouping section, e.g. {"variant": "gqa"}) from the MHA
  checkpoint for `steps`, evaluating at the start and `evals` times; returns its final eval
  metrics. A run that already finished (with this config) is read back, not started.
  extra_eval: more metrics at each eval (trainer.train's)."""
  c = base.copy_and_resolve_references()
  every = max(steps // evals, 1)  # three "epochs" of weights for the plots by default
  c.update(
    dict(
      model=dict(init_from=init_from),
      grouping=grouping,
      optim=dict(
        num_train_steps=steps, num_epochs=0, warmup_steps=min(c.optim.warmup_steps, steps // 10)
      ),
      eval=dict(every=every, at_start=True),
      checkpoint=dict(every=every, keep=10),
    )
  )
  done = finished(workdir, steps)
  if done is not None:  # read back only under its own config, also with checkpoints deleted
    preflight.check_finished_run(c, workdir)
    return done
  preflight.check_resume(c, workdir)  # results of another config are not reused
  if pretrain_dir and c.data.tokenizer == "sentencepiece":  # the MHA checkpoint's vocabulary
    os.makedirs(workdir, exist_ok=True)
    if not os.path.exists(os.path.join(workdir, workdir_lib.SPM_MODEL)):
      shutil.copy(
        os.path.join(pretrain_dir, workdir_lib.SPM_MODEL),
        os.path.join(workdir, workdir_lib.SPM_MODEL),
      )
  print(
    f"== {', '.join(f'{k}={v}' for k, v in grouping.items())}: {steps} steps from "
    f"{init_from} -> {workdir}"
  )
  trainer.train(c, workdir, extra_eval=extra_eval)
  return finished(workdir, steps)


def finished(workdir: str, steps: int) -> dict | None:
  """The final eval metrics of a run that reached `steps`, else None."""
  if not os.path.exists(os.path.join(workdir, workdir_lib.METRICS)):
    return None
  rows = [r for r in analysis.read_metrics(workdir) if r.get("step") == steps and "eval/loss" in r]
  return rows[-1] if rows else None


def mha_checkpoint(base, out: str, pretrain_steps: int) -> tuple[str, str | None]:
  """(init_from, pretraining workdir or None): with pretrain_steps > 0 a random model of the
  config's architecture trained as MHA into OUT/pretrain_mha (resumed if there), standing in
  for a pretrained checkpoint; else the config's model.init_from."""
  if pretrain_steps <= 0:
    return base.model.init_from, None
  pre = os.path.join(out, "pretrain_mha")
  c = base.copy_and_resolve_references()
  # held-out loss of a pretraining objective is cheap: show its curve; decoding is not
  every = max(pretrain_steps // 4, 1) if c.data.objective != "pairs" else 0
  c.update(
    dict(
      grouping=dict(variant="mha"),
      eval=dict(every=every),
      optim=dict(num_train_steps=pretrain_steps, num_epochs=0),
    )
  )
  print(f"== pretraining MHA for {pretrain_steps} steps -> {pre}")
  trainer.train(c, pre)
  return os.path.join(pre, workdir_lib.FINAL), pre


def report(results: dict, runs: dict, header: list[str], out: str) -> tuple[list[str], dict]:
  """results.md lines (table, orderings, WGQA t-tests) and results.json content; plots."""
  variants = list(results)
  metric_names = [
    m
    for m in (
      "eval/perplexity",
      "eval/rouge1",
      "eval/rouge2",
      "eval/rougeL",
      "eval/rougeLsum",
      "eval/bleu",
    )
    if m in next(iter(results.values()))
  ]
  lines = header + [
    "| variant | eval loss | " + " | ".join(m.split("/")[1] for m in metric_names) + " |",
    "|---|---|" + "---|" * len(metric_names),
  ]
  for v in variants:
    r = results[v]
    lines.append(
      f"| {v} | {r['eval/loss']:.4f} | " + " | ".join(f"{r[m]:.2f}" for m in metric_names) + " |"
    )
  main_metric = metric_names[0] if metric_names else "eval/loss"
  lower = main_metric in ("eval/loss", "eval/perplexity")  # else higher is better
  order = sorted(variants, key=lambda v: results[v][main_metric] * (1 if lower else -1))
  by_loss = sorted(variants, key=lambda v: results[v]["eval/loss"])
  start = {
    v: next(
      (
        r[main_metric]
        for r in analysis.read_metrics(runs[v])
        if r.get("step") == 0 and main_metric in r
      ),
      float("nan"),
    )
    for v in variants
  }
  lines += [
    "",
    f"Right after conversion (step 0), {main_metric}: "
    + ", ".join(f"{v} {start[v]:.1f}" for v in variants),
  ]
  lines += [
    "",
    f"Ordering by {main_metric}, best first: " + ", ".join(order),
    "Ordering by eval loss (lower is better; finer-grained when the metric saturates): "
    + " < ".join(by_loss),
  ]
  analysed = analysis.analyse(list(runs.values()), os.path.join(out, "analysis"), main_metric)
  for name, r in analysed["wgqa"].items():
    last = r["ttest_vs_0.5"][max(r["ttest_vs_0.5"])]
    lines.append(
      f"{name}: learned weights mean {last['mean']:.3f} (n={last['n']}), "
      f"t-test vs 0.5: p={last['p_value']:.3g}"
    )
  return lines, {"results": results, "ordering": order, "ordering_by_loss": by_loss}


def describe_data(d) -> str:
  """What a config's data section trains on, for a results header."""
  return (
    f"{d.objective} on {corpora.describe(d.dataset)}"
    if d.objective != "pairs"
    else f"pairs: {d.dataset}"
  )


def check(base, variants: list[str], steps: int = 1, pretrain_steps: int = 0) -> None:
  """Fail before any training on a bad variant or budget (not after hours of the others)."""
  if steps < 1:
    raise UserError(f"--steps={steps}: at least 1")
  if pretrain_steps < 0:
    raise UserError(f"--pretrain_steps={pretrain_steps}: 0 (use model.init_from) or more")
  cfg = resolve(base.model.init_from, base.model.arch).cfg  # what every variant converts
  for v in variants:
    c = base.copy_and_resolve_references()
    c.grouping.variant = v
    validate(c)
    preflight.check_model(c, cfg)


def run(
  base, variants: list[str], out: str, pretrain_steps: int, steps: int, command: str
) -> list[str]:
  """The sweep: the MHA checkpoint, every variant uptrained with the same budget, then
  OUT/results.md (returned as lines), results.json, curves and WGQA weight plots."""
  check(base, variants, steps, pretrain_steps)
  os.makedirs(out, exist_ok=True)
  t0 = time.time()

  # ---- 1. the MHA checkpoint ----
  init_from, pre = mha_checkpoint(base, out, pretrain_steps)

  # ---- 2. uptrain every variant with the same budget ----
  runs = {v: os.path.join(out, v) for v in variants}
  results = {v: uptrain(base, dict(variant=v), init_from, pre, steps, runs[v]) for v in variants}

  # ---- 3. table, curves, weights ----
  d = base.data
  header = [
    f"# Sweep: {', '.join(variants)}",
    "",
    f"Command: `python -m wgqa_jax.sweep {command}`",
    f"Objective: {describe_data(d)}; eval on held-out data"
    + (" (loss and perplexity of the same objective)" if d.objective != "pairs" else ""),
    f"Every variant uptrained {steps} steps from the same MHA checkpoint "
    f"({init_from}); {time.time() - t0:.0f} s in all.",
    "",
  ]
  lines, summary = report(results, runs, header, out)
  workdir_lib.write_text(os.path.join(out, "results.md"), "\n".join(lines) + "\n")  # whole
  workdir_lib.write_json(
    os.path.join(out, "results.json"),
    {
      **summary,
      "init_from": init_from,
      "objective": d.objective,
      "dataset": corpora.describe(d.dataset),
    },
    indent=1,
  )
  return lines
