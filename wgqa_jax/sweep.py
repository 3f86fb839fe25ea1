"""Uptrain several variants from one MHA checkpoint with the same budget; write the paper's table.

    python -m wgqa_jax.sweep --config=configs/tiny.py --out=workdirs/sweep
    python -m wgqa_jax.sweep --config=configs/paper.py:mha,small --pretrain_steps=0 \
        --variants=mha,mqa,gqa,wgqa,randwgqa --out=/tmp/sweep_small   # init_from: a trained MHA

--config and --config.SECTION.KEY=VALUE overrides work as in wgqa_jax.train and apply to every run.

1. MHA checkpoint: with --pretrain_steps > 0 (the offline default) a random T5 is first trained
   as MHA on the task, standing in for a pretrained checkpoint; otherwise config.init_from is used.
2. Every variant is converted from that checkpoint and uptrained for --steps with one config.
3. results.md / results.json: eval loss and ROUGE per variant (the paper's Table I), curves.png,
   WGQA weight plots and t-tests (wgqa_jax.analysis). Re-running resumes finished/partial runs.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

from absl import flags
from ml_collections import config_flags

from wgqa_jax import analysis, cli, corpora, train
from wgqa_jax.train_config import validate

DEFAULT_VARIANTS = "mha,mqa,gqa,wgqa,randwgqa,colwgqa,simgqa,kdgqa,dgqa,pgqa"

FLAGS = cli.flag_set()
_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "training config file",
                                          lock_config=True, flag_values=FLAGS)
flags.DEFINE_list("variants", DEFAULT_VARIANTS, "variants to uptrain", flag_values=FLAGS)
flags.DEFINE_string("out", None, "sweep directory", flag_values=FLAGS)
flags.DEFINE_integer("pretrain_steps", 1000, "train a random MHA this long first "
                     "(0: use config.model.init_from)", flag_values=FLAGS)
flags.DEFINE_integer("steps", 120, "uptraining steps per variant", flag_values=FLAGS)


def uptrain(base, grouping: dict, init_from: str, pretrain_dir: str | None, steps: int,
            workdir: str, evals: int = 3) -> dict:
  """Uptrain one grouping (the config's grouping section, e.g. {"variant": "gqa"}) from the MHA
  checkpoint for `steps`, evaluating at the start and `evals` times; returns its final eval
  metrics. A run that already finished (with this config) is read back, not started."""
  c = base.copy_and_resolve_references()
  every = max(steps // evals, 1)  # three "epochs" of weights for the plots by default
  c.update(dict(model=dict(init_from=init_from), grouping=grouping,
                optim=dict(num_train_steps=steps, num_epochs=0,
                           warmup_steps=min(c.optim.warmup_steps, steps // 10)),
                eval=dict(every=every, at_start=True),
                checkpoint=dict(every=every, keep=10)))
  train.check_resume(c, workdir)  # results of another config are not reused
  done = finished(workdir, steps)
  if done is not None:
    return done
  if pretrain_dir and c.data.tokenizer == "sentencepiece":  # the MHA checkpoint's vocabulary
    os.makedirs(workdir, exist_ok=True)
    if not os.path.exists(os.path.join(workdir, "spm.model")):
      shutil.copy(os.path.join(pretrain_dir, "spm.model"), os.path.join(workdir, "spm.model"))
  print(f"== {', '.join(f'{k}={v}' for k, v in grouping.items())}: {steps} steps from "
        f"{init_from} -> {workdir}")
  train.train(c, workdir)
  return finished(workdir, steps)


def finished(workdir: str, steps: int) -> dict | None:
  """The final eval metrics of a run that reached `steps`, else None."""
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
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
  c.update(dict(grouping=dict(variant="mha"), eval=dict(every=every),
                optim=dict(num_train_steps=pretrain_steps, num_epochs=0)))
  print(f"== pretraining MHA for {pretrain_steps} steps -> {pre}")
  train.train(c, pre)
  return os.path.join(pre, "final"), pre


def report(results: dict, runs: dict, header: list[str], out: str) -> tuple[list[str], dict]:
  """results.md lines (table, orderings, WGQA t-tests) and results.json content; plots."""
  variants = list(results)
  metric_names = [m for m in ("eval/perplexity", "eval/rouge1", "eval/rouge2", "eval/rougeL",
                              "eval/rougeLsum", "eval/bleu")
                  if m in next(iter(results.values()))]
  lines = header + [
      "| variant | eval loss | " + " | ".join(m.split("/")[1] for m in metric_names) + " |",
      "|---|---|" + "---|" * len(metric_names)]
  for v in variants:
    r = results[v]
    lines.append(f"| {v} | {r['eval/loss']:.4f} | " +
                 " | ".join(f"{r[m]:.2f}" for m in metric_names) + " |")
  main_metric = metric_names[0] if metric_names else "eval/loss"
  lower = main_metric in ("eval/loss", "eval/perplexity")  # else higher is better
  order = sorted(variants, key=lambda v: results[v][main_metric] * (1 if lower else -1))
  by_loss = sorted(variants, key=lambda v: results[v]["eval/loss"])
  start = {v: next((r[main_metric] for r in analysis.read_metrics(runs[v])
                    if r.get("step") == 0 and main_metric in r), float("nan")) for v in variants}
  lines += ["", f"Right after conversion (step 0), {main_metric}: " + ", ".join(
      f"{v} {start[v]:.1f}" for v in variants)]
  lines += ["", f"Ordering by {main_metric}, best first: " + ", ".join(order),
            "Ordering by eval loss (lower is better; finer-grained when the metric saturates): "
            + " < ".join(by_loss)]
  analysed = analysis.analyse(list(runs.values()), os.path.join(out, "analysis"), main_metric)
  for name, r in analysed["wgqa"].items():
    last = r["ttest_vs_0.5"][max(r["ttest_vs_0.5"])]
    lines.append(f"{name}: learned weights mean {last['mean']:.3f} (n={last['n']}), "
                 f"t-test vs 0.5: p={last['p_value']:.3g}")
  return lines, {"results": results, "ordering": order, "ordering_by_loss": by_loss}


def main(argv: list[str] | None = None) -> int:
  args = cli.parse(FLAGS, argv, "wgqa_jax.sweep")
  if not args.out:
    raise ValueError("pass --out=DIR")
  variants = [v.strip() for v in args.variants if v.strip()]
  base = _CONFIG.value
  for v in variants:  # fail before any training on a bad variant
    c = base.copy_and_resolve_references()
    c.grouping.variant = v
    validate(c)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()

  # ---- 1. the MHA checkpoint ----
  init_from, pre = mha_checkpoint(base, args.out, args.pretrain_steps)

  # ---- 2. uptrain every variant with the same budget ----
  runs = {v: os.path.join(args.out, v) for v in variants}
  results = {v: uptrain(base, dict(variant=v), init_from, pre, args.steps, runs[v])
             for v in variants}

  # ---- 3. table, curves, weights ----
  command = " ".join(argv if argv is not None else sys.argv[1:])
  d = base.data
  what = (f"{d.objective} on {corpora.describe(d.dataset)}" if d.objective != "pairs"
          else f"pairs: {d.dataset}")
  header = [f"# Sweep: {', '.join(variants)}", "",
            f"Command: `python -m wgqa_jax.sweep {command}`",
            f"Objective: {what}; eval on held-out data"
            + (" (loss and perplexity of the same objective)" if d.objective != "pairs"
               else ""),
            f"Every variant uptrained {args.steps} steps from the same MHA checkpoint "
            f"({init_from}); {time.time() - t0:.0f} s in all.", ""]
  lines, summary = report(results, runs, header, args.out)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({**summary, "init_from": init_from, "objective": base.data.objective,
               "dataset": corpora.describe(base.data.dataset)}, f, indent=1)
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
