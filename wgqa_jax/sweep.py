"""Uptrain several variants from one MHA checkpoint with the same budget; write the paper's table.

    python -m wgqa_jax.sweep --config=configs/tiny.py --out=workdirs/sweep
    python -m wgqa_jax.sweep --config=configs/wgqa_small.py --variants=mha,mqa,gqa,wgqa,randwgqa \
        --out=/tmp/sweep_small --pretrain_steps=0          # init_from is already a trained MHA

1. MHA checkpoint: with --pretrain_steps > 0 (the offline default) a random T5 is first trained
   as MHA on the task, standing in for a pretrained checkpoint; otherwise config.init_from is used.
2. Every variant is converted from that checkpoint and uptrained for --steps with one config.
3. results.md / results.json: eval loss and ROUGE per variant (the paper's Table I), curves.png,
   WGQA weight plots and t-tests (wgqa_jax.analysis). Re-running resumes finished/partial runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from wgqa_jax import analysis, train
from wgqa_jax.train_config import validate

DEFAULT_VARIANTS = "mha,mqa,gqa,wgqa,randwgqa,colwgqa,simgqa,kdgqa,dgqa,pgqa"


def load_config(path: str):
  import importlib.util
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such config file: {path}")
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def apply_overrides(c, overrides: list[str]):
  for item in overrides:
    key, _, value = item.partition("=")
    if key not in c:
      raise ValueError(f"unknown config key {key!r}")
    old = c[key]
    c[key] = type(old)(value) if not isinstance(old, bool) else value.lower() in ("1", "true")
  return c


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m wgqa_jax.sweep", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="configs/tiny.py")
  ap.add_argument("--variants", default=DEFAULT_VARIANTS)
  ap.add_argument("--out", required=True)
  ap.add_argument("--pretrain_steps", type=int, default=1000,
                  help="train a random MHA this long first (0: use config.init_from)")
  ap.add_argument("--steps", type=int, default=120, help="uptraining steps per variant")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="config override for every run (repeatable)")
  args = ap.parse_args(argv)
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  base = apply_overrides(load_config(args.config), args.set)
  for v in variants:  # fail before any training on a bad variant
    c = base.copy_and_resolve_references()
    c.variant = v
    validate(c)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()

  # ---- 1. the MHA checkpoint ----
  if args.pretrain_steps > 0:
    pre = os.path.join(args.out, "pretrain_mha")
    c = base.copy_and_resolve_references()
    c.update(dict(variant="mha", num_train_steps=args.pretrain_steps, num_epochs=0,
                  eval_every=0))
    print(f"== pretraining MHA for {args.pretrain_steps} steps -> {pre}")
    train.train(c, pre)
    init_from = os.path.join(pre, "final")
  else:
    init_from, pre = base.init_from, None

  # ---- 2. uptrain every variant with the same budget ----
  results, runs = {}, {}
  for v in variants:
    w = os.path.join(args.out, v)
    c = base.copy_and_resolve_references()
    checkpoints = max(args.steps // 3, 1)  # three "epochs" of weights for the plots
    c.update(dict(init_from=init_from, variant=v, num_train_steps=args.steps, num_epochs=0,
                  eval_every=checkpoints, checkpoint_every=checkpoints, keep_checkpoints=10,
                  eval_at_start=True,
                  warmup_steps=min(c.warmup_steps, args.steps // 10)))
    if pre and c.tokenizer == "sentencepiece":  # same vocabulary as the MHA checkpoint
      os.makedirs(w, exist_ok=True)
      if not os.path.exists(os.path.join(w, "spm.model")):
        shutil.copy(os.path.join(pre, "spm.model"), os.path.join(w, "spm.model"))
    print(f"== {v}: {args.steps} steps from {init_from} -> {w}")
    train.train(c, w)
    final = [r for r in analysis.read_metrics(w) if r.get("step") == args.steps and
             "eval/loss" in r][-1]
    results[v] = final
    runs[v] = w

  # ---- 3. table, curves, weights ----
  metric_names = [m for m in ("eval/rouge1", "eval/rouge2", "eval/rougeL", "eval/rougeLsum",
                              "eval/bleu") if m in next(iter(results.values()))]
  lines = [f"# Sweep: {', '.join(variants)}", "",
           f"Command: `python -m wgqa_jax.sweep {' '.join(argv if argv is not None else sys.argv[1:])}`",
           f"Every variant uptrained {args.steps} steps from the same MHA checkpoint "
           f"({init_from}); {time.time() - t0:.0f} s in all.", "",
           "| variant | eval loss | " + " | ".join(m.split("/")[1] for m in metric_names) + " |",
           "|---|---|" + "---|" * len(metric_names)]
  for v in variants:
    r = results[v]
    lines.append(f"| {v} | {r['eval/loss']:.4f} | " +
                 " | ".join(f"{r[m]:.2f}" for m in metric_names) + " |")
  main_metric = metric_names[0] if metric_names else "eval/loss"
  order = sorted(variants, key=lambda v: -results[v][main_metric])
  by_loss = sorted(variants, key=lambda v: results[v]["eval/loss"])
  start = {v: next((r[main_metric] for r in analysis.read_metrics(runs[v])
                    if r.get("step") == 0 and main_metric in r), float("nan")) for v in variants}
  lines += ["", f"Right after conversion (step 0), {main_metric}: " + ", ".join(
      f"{v} {start[v]:.1f}" for v in variants)]
  lines += ["", f"Ordering by {main_metric}: " + " > ".join(order),
            "Ordering by eval loss (lower is better; finer-grained when the metric saturates): "
            + " < ".join(by_loss)]
  report = analysis.analyse(list(runs.values()), os.path.join(args.out, "analysis"), main_metric)
  for name, r in report["wgqa"].items():
    last = r["ttest_vs_0.5"][max(r["ttest_vs_0.5"])]
    lines.append(f"{name}: learned weights mean {last['mean']:.3f} (n={last['n']}), "
                 f"t-test vs 0.5: p={last['p_value']:.3g}")
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"results": results, "ordering": order, "ordering_by_loss": by_loss,
               "init_from": init_from}, f, indent=1)
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
