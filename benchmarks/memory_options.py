"""What each memory option costs in quality: the same run, each option against float32 params
with AdamW (the default), train loss and eval loss side by side, a plot of the curves.

    python benchmarks/memory_options.py            # configs/tiny.py, 1500 steps: ~10 min on 2 cores
    python benchmarks/memory_options.py --steps=30 --out=/tmp/m.md    # seconds

Options (docs/gpu.md): bf16 params (stochastic rounding, no float32 master copy), Adafactor,
both, and the optimizer state offloaded to host memory (the same numbers as the default by
construction: a check, not an approximation). benchmarks/gpu.py runs the same comparison on a GPU.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import sys
import tempfile

from absl import flags

from wgqa_jax.core import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LR_SCALE = "learning rate x"  # an override that multiplies the run's optim.learning_rate
OPTIONS = {  # name: config overrides
  "f32 params, AdamW (default)": {},
  "bf16 params, AdamW": {"model.param_dtype": "bfloat16"},
  "f32 params, Adafactor": {"optim.optimizer": "adafactor"},
  "bf16 params, Adafactor": {"model.param_dtype": "bfloat16", "optim.optimizer": "adafactor"},
  # Adafactor's steps are relative to each param's scale: the rate that suits AdamW is small
  "bf16 params, Adafactor, 10x learning rate": {
    "model.param_dtype": "bfloat16",
    "optim.optimizer": "adafactor",
    LR_SCALE: 10.0,
  },
  "f32 params, AdamW, state offloaded": {"optim.offload_state": True},
}


def compare(c, steps: int, workdir: str, options: dict = OPTIONS) -> dict[str, str]:
  """Train config `c` for `steps` steps once per option; {option: its workdir}."""
  from wgqa_jax.training import trainer

  runs = {}
  for i, (name, overrides) in enumerate(options.items()):
    run = c.copy_and_resolve_references()
    run.unlock()
    overrides = dict(overrides)
    scale = overrides.pop(LR_SCALE, 1.0)
    run.update_from_flattened_dict(
      {"optim.num_train_steps": steps, "eval.every": 0, "checkpoint.every": steps, **overrides}
    )
    run.optim.learning_rate *= scale
    run.lock()
    runs[name] = os.path.join(workdir, f"option_{i}")
    print(f"{name}: {overrides or 'defaults'}", flush=True)
    trainer.train(run, runs[name])
  return runs


def table(runs: dict[str, str], at: list[int]) -> list[str]:
  """Train loss at the steps `at` and the final eval loss of each run, and each against the
  first (the default)."""
  from wgqa_jax.lab.analysis import read_metrics

  rows, base = [], None
  for name, workdir in runs.items():
    recs = read_metrics(workdir)
    train = {r["step"]: r["train/loss"] for r in recs if "train/loss" in r}
    evals = [r["eval/loss"] for r in recs if "eval/loss" in r]
    final = evals[-1] if evals else float("nan")
    base = base or (train, final)
    cells = [f"{train.get(s, float('nan')):.4f}" for s in at]
    rows.append(f"| {name} | {' | '.join(cells)} | {final:.4f} | {final - base[1]:+.4f} |")
  head = " | ".join(f"train loss @ {s}" for s in at)
  return [
    f"| option | {head} | final eval loss | vs default |",
    "|---" * (len(at) + 3) + "|",
    *rows,
  ]


FLAGS = cli.flag_set()
flags.DEFINE_integer("steps", 1500, "train steps of each run", flag_values=FLAGS)
flags.DEFINE_string("config", "configs/tiny.py", "the run (a config file)", flag_values=FLAGS)
flags.DEFINE_string(
  "out",
  os.path.join(REPO, "benchmarks", "RESULTS_memory_options.md"),
  "results file",
  flag_values=FLAGS,
)


def main(argv: list[str] | None = None) -> int:
  import importlib.util

  from wgqa_jax.lab.analysis import plot_curves

  cli.parse(FLAGS, argv, "benchmarks/memory_options.py")
  spec = importlib.util.spec_from_file_location("run_config", os.path.join(REPO, FLAGS.config))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  steps = FLAGS.steps
  work = tempfile.mkdtemp(prefix="wgqa_memory_options_")
  try:
    runs = compare(c, steps, work)
    at = sorted({max(c.log_every, steps // 10), steps // 2, steps} - {0})
    png = os.path.splitext(FLAGS.out)[0] + ".png"
    plot_curves(runs, "train/loss", png)
    import jax

    command = "python benchmarks/memory_options.py" + "".join(f" {a}" for a in sys.argv[1:])
    lines = [
      "# Memory options: their cost in quality",
      "",
      f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
      f"{jax.devices()[0].device_kind}; `{FLAGS.config}` for {steps} steps, each option on the "
      "same data, seed and schedule (docs/gpu.md).",
      "",
      *table(runs, at),
      "",
      f"![train loss]({os.path.basename(png)})",
      "",
      f"Command: `{command}`",
      "",
    ]
    with open(FLAGS.out, "w") as f:
      f.write("\n".join(lines))
    print("\n".join(lines))
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
