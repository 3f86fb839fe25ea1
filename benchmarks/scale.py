"""Real model sizes without the hardware: per-device memory and compile time from the planner
(XLA's memory analysis of the real train step on fake CPU devices), and host memory while a
checkpoint loads. Writes benchmarks/RESULTS_scale.md.

    python benchmarks/scale.py                    # every section (about 25 minutes on 2 cores)
    python benchmarks/scale.py --only=load        # host memory while loading, 2.1 GB checkpoint
    python benchmarks/scale.py --only=goals       # issue #33's rows: 7B on 1 GPU, 70B on 8
    python benchmarks/scale.py --only=plan --rows=llama-2-7b

plan: each row is one `python -m wgqa_jax.plan` process (the device count is fixed when JAX
starts). load: a synthetic Llama checkpoint (bf16 safetensors, written here) loaded onto 8 fake
devices as GQA-2, once streamed (wgqa_jax.store.streaming, what train does) and once read whole then
placed (hf.from_hf + device_put, what train did before); peak RSS from /proc.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ONLY = flags.DEFINE_enum("only", None, ["plan", "goals", "load"], "run one section")
_ROWS = flags.DEFINE_string("rows", None, "plan rows whose shape contains this string")
_OUT = flags.DEFINE_string(
  "out", os.path.join(ROOT, "benchmarks", "RESULTS_scale.md"), "results file"
)

# (shape, devices, variant, mesh overrides, remat, scan, extra config overrides)
PLAN_ROWS = [
  ("llama-2-7b", 8, "gqa", dict(data=1, fsdp=8, model=1), "full", True, {}),
  ("llama-2-7b", 8, "wgqa", dict(data=1, fsdp=8, model=1), "full", True, {}),
  ("llama-2-7b", 8, "wgqa", dict(data=1, fsdp=8, model=1), "dots", True, {}),
  ("llama-2-7b", 8, "wgqa", dict(data=1, fsdp=8, model=1), "none", True, {}),
  ("llama-2-7b", 8, "wgqa", dict(data=1, fsdp=4, model=2), "full", True, {}),
  ("llama-2-7b", 8, "wgqa", dict(data=1, fsdp=8, model=1), "full", True, {"optim.batch_size": 32}),
  ("llama-2-7b", 8, "wgqa", dict(data=1, fsdp=8, model=1), "full", False, {}),
  ("llama-2-13b", 8, "wgqa", dict(data=1, fsdp=8, model=1), "full", True, {}),
  (
    "llama-2-70b",
    64,
    "gqa",
    dict(data=1, fsdp=64, model=1),
    "full",
    True,
    {"optim.batch_size": 64},
  ),
  ("t5-v1_1-xl", 8, "gqa", dict(data=1, fsdp=8, model=1), "full", True, {}),
  ("t5-v1_1-xl", 8, "wgqa", dict(data=1, fsdp=8, model=1), "full", True, {}),
  ("t5-v1_1-xxl", 16, "gqa", dict(data=1, fsdp=16, model=1), "full", True, {}),
  ("t5-v1_1-xxl", 16, "wgqa", dict(data=1, fsdp=16, model=1), "full", True, {}),
]


# Issue #33's goals: (shape, devices, variant, mesh, remat, scan, extra, GiB per device at most)
MEMORY_OPTIONS = {
  "model.attention": "blockwise",
  "model.param_dtype": "bfloat16",
  "optim.optimizer": "adafactor",
}
GOAL_ROWS = [
  ("llama-2-7b", 1, "wgqa", dict(data=1, fsdp=1, model=1), "full", True,
   {"optim.batch_size": 2, **MEMORY_OPTIONS}, 72),
  ("llama-2-70b", 8, "gqa", dict(data=1, fsdp=8, model=1), "full", True,
   {"optim.batch_size": 8, **MEMORY_OPTIONS}, 72),
  ("llama-2-7b", 8, "wgqa", dict(data=1, fsdp=8, model=1), "full", True,
   {"optim.batch_size": 32, **MEMORY_OPTIONS}, 35),
]  # fmt: skip


def plan_row(shape, devices, variant, mesh, remat, scan, extra) -> dict:
  args = [
    sys.executable,
    "-m",
    "wgqa_jax.plan",
    f"--config=configs/scale.py:{shape}",
    f"--devices={devices}",
    f"--config.grouping.variant={variant}",
    f"--config.model.remat={remat}",
    f"--config.model.scan_layers={scan}",
  ]
  args += [f"--config.mesh.{k}={v}" for k, v in mesh.items()]
  args += [f"--config.{k}={v}" for k, v in extra.items()]
  r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
  if r.returncode:
    raise RuntimeError(f"{' '.join(args)}\n{r.stderr[-3000:]}")
  out = json.loads(r.stdout.strip().splitlines()[-1])
  out["command"] = " ".join(["python -m wgqa_jax.plan"] + args[3:])
  return out


def plan_section() -> list[str]:
  gib = lambda x: f"{x / 2**30:.1f}"
  lines = [
    "## Per-device memory of the train step (planner)",
    "",
    "`python -m wgqa_jax.plan` on fake CPU devices, bf16 compute, f32 params and AdamW "
    "moments, global batch as listed (Llama rows: 3840 input + 256 target tokens = 4096 "
    "per row; T5: 512 / 128). WGQA keeps all H K/V kernels while training. "
    "GiB per device.",
    "",
    "| shape | devices | variant | mesh (data, fsdp, model) | batch | remat | layers | "
    "params | opt state | temp | **total** | compile s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  commands = []
  for row in PLAN_ROWS:
    if _ROWS.value and _ROWS.value not in row[0]:
      continue
    r = plan_row(*row)
    b = r["per_device_bytes"]
    m = r["mesh"]
    print(
      f"{row[0]} {row[2]} {m} remat={row[4]} scan={row[5]}: {gib(b['total'])} GiB, "
      f"{r['compile_s']} s",
      flush=True,
    )
    lines.append(
      f"| {row[0]} | {row[1]} | {row[2]} ({r['grouping']}) | ({m['data']}, {m['fsdp']}, "
      f"{m['model']}) | {r['batch']['inputs'][0]} | {r['remat']} | "
      f"{'scanned' if r['scan_layers'] else 'unrolled'} | {gib(b['params'])} | "
      f"{gib(b['opt_state'])} | {gib(b['temp'])} | **{gib(b['total'])}** | "
      f"{r['compile_s']} |"
    )
    commands.append(r["command"])
  return lines + ["", "Commands:", "", "```"] + commands + ["```", ""]


def goals_section() -> list[str]:
  gib = lambda x: f"{x / 2**30:.1f}"
  lines = [
    "## Issue #33's goals: 7B on one 80 GB GPU, 70B on one 8-GPU node",
    "",
    "The planner (as in the next section) with the memory options of docs/gpu.md: bf16 "
    "params (updates rounded stochastically), Adafactor, blockwise attention (what the "
    "planner compiles for `attention=cudnn` too). Rows of 3840 input + 256 target tokens. "
    "GiB per device; usable is 90% of 80 GB.",
    "",
    "| shape | devices | variant | batch | params | opt state | temp | **total** | goal | met | "
    "compile s |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  commands = []
  for *row, goal in GOAL_ROWS:
    if _ROWS.value and _ROWS.value not in row[0]:
      continue
    r = plan_row(*row)
    b = r["per_device_bytes"]
    total = b["total"] / 2**30
    print(f"goal {row[0]} on {row[1]}: {total:.1f} GiB (goal {goal})", flush=True)
    lines.append(
      f"| {row[0]} | {row[1]} | {row[2]} ({r['grouping']}) | {r['batch']['inputs'][0]} x 4096 "
      f"| {gib(b['params'])} | {gib(b['opt_state'])} | {gib(b['temp'])} | **{total:.1f}** | "
      f"<= {goal} | {'yes' if total <= goal else 'NO'} | {r['compile_s']} |"
    )
    commands.append(r["command"])
  return lines + ["", "Commands:", "", "```"] + commands + ["```", ""]


LOAD = """
import sys, time, jax, numpy as np
from wgqa_jax.core import sharding
from wgqa_jax.grouping import variants
from wgqa_jax.store import hf, streaming
from wgqa_jax.store.resolve import resolve
from wgqa_jax.training import steps as train_step
def rss():
  kb = dict(l.split(":") for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM")))
  return int(kb["VmRSS"].split()[0]) * 1024, int(kb["VmHWM"].split()[0]) * 1024
path, how = sys.argv[1], sys.argv[2]
source = resolve(path).open_weights()
cfg, convert = variants.converter(source.cfg, "gqa", 2)
shardings = train_step.param_shardings(cfg, sharding.make_mesh(1, 8, 1))
jax.block_until_ready(jax.device_put(np.zeros((8, 8)), shardings["embed"]["embedding"]))
before, t0 = rss()[0], time.time()
if how == "streamed":
  params = streaming.load_sharded(source, cfg, shardings, convert, desc=None)
else:
  params, _ = variants.from_mha(*hf.from_hf(path), "gqa", 2)
  params = jax.device_put(jax.tree.map(np.asarray, params), shardings)
params = jax.block_until_ready(params)
seconds = time.time() - t0
now, peak = rss()
placed = sum(x.nbytes for x in jax.tree.leaves(params))
print(before, peak, now, placed, seconds)
"""


def load_section() -> list[str]:
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  with tempfile.TemporaryDirectory() as tmp:
    torch.manual_seed(0)
    spec = dict(
      vocab_size=32000,
      hidden_size=2048,
      intermediate_size=5632,
      num_hidden_layers=20,
      num_attention_heads=16,
      num_key_value_heads=16,
      head_dim=128,
    )
    model = LlamaForCausalLM(LlamaConfig(**spec)).to(torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
    del model
    size = sum(
      os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.endswith(".safetensors")
    )
    env = {
      **os.environ,
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
      "JAX_PLATFORMS": "cpu",
    }
    rows = []
    for how in ("streamed", "whole"):
      r = subprocess.run(
        [sys.executable, "-c", LOAD, tmp, how], capture_output=True, text=True, env=env, cwd=ROOT
      )
      if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
      before, peak, now, placed, seconds = (float(x) for x in r.stdout.split()[-5:])
      rows.append((how, before, peak, now, placed, seconds))
      print(how, rows[-1], flush=True)
  gb = lambda x: f"{x / 1e9:.2f}"
  lines = [
    "## Host memory while loading a checkpoint",
    "",
    f"A synthetic Llama ({spec}) saved by transformers as one bf16 safetensors file of "
    f"**{gb(size)} GB** ({gb(2 * size)} GB in f32), loaded onto 8 fake CPU devices as "
    "GQA-2 with FSDP 8. The fake devices' buffers are host memory too, so the table "
    "separates what ends up placed from the transient: peak RSS minus RSS before the "
    "load minus the placed params.",
    "",
    "| how | placed params GB | peak RSS GB | transient GB | transient / file | s |",
    "|---|---|---|---|---|---|",
  ]
  for how, before, peak, _now, placed, seconds in rows:
    name = (
      "streamed: `streaming.load_sharded` (train today)"
      if how == "streamed"
      else "whole: `hf.from_hf` + `from_mha` + `device_put` (train before)"
    )
    lines.append(
      f"| {name} | {gb(placed)} | {gb(peak)} | **{gb(peak - before - placed)}** | "
      f"{(peak - before - placed) / size:.2f} | {seconds:.1f} |"
    )
  return lines + ["", "Command: `python benchmarks/scale.py --only=load`", ""]


def main(argv):
  del argv
  sections = [
    "# Real model sizes",
    "",
    f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} CPU cores, `python benchmarks/scale.py`"
    + (f" --only={_ONLY.value}" if _ONLY.value else ""),
    "",
  ]
  if _ONLY.value in (None, "goals"):
    sections += goals_section()
  if _ONLY.value in (None, "plan"):
    sections += plan_section()
  if _ONLY.value in (None, "load"):
    sections += load_section()
  with open(_OUT.value, "w") as f:
    f.write("\n".join(sections))
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
