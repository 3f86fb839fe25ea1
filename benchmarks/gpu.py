"""One prepared script for a session lent a GPU: everything #33 asks a GPU to measure, in one go,
offline, written to benchmarks/RESULTS_gpu.md section by section (a run cut short keeps what it
finished).

    python benchmarks/gpu.py                       # one H100 / H200: about 8 minutes
    python benchmarks/gpu.py --preset=smoke        # CPU, about a minute: what CI runs
    python benchmarks/gpu.py --parts=train,peak    # some sections

1. agree   each attention form against einsum on this device: loss and gradients (T5 with its
           trainable position bias, Llama causal; padded rows; keys longer than a block)
2. train   train-step tokens/s and MFU: t5-base and llama-1b (1.3B), each attention form
3. peak    peak device memory of a train step (device.memory_stats) against the planner's CPU
           figure for the same run, in fresh processes
4. decode  cached greedy decode tokens/s, MHA / GQA / MQA, long contexts
5. quality the memory options' loss against f32 AdamW over a few hundred steps
           (benchmarks/memory_options.py)
"""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from absl import flags

from wgqa_jax.core import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

FORMS = ("einsum", "dot_product", "cudnn", "blockwise")
# the memory options that fit Llama-2-7B on one GPU (benchmarks/scale.py's goal rows)
MEMORY_OPTIONS = dict(
  remat="full", forms=("blockwise",), param_dtype="bfloat16", optimizer="adafactor"
)
# a row: an architecture preset, its batch (rows x input + target tokens), the variant its MHA
# weights are uptrained into; each section adds its layer options
LLAMA_1B = dict(arch="llama-1b", batch=8, inputs=1792, targets=256, variant="gqa", kv_heads=8)
LLAMA_TINY = dict(arch="llama-tiny", batch=4, inputs=48, targets=16, variant="gqa", kv_heads=2)
PRESETS = {
  "full": {
    "dtype": "bfloat16",
    "agree": {"t5": "t5-small", "llama": "llama-1b", "length": 2048, "batch": 2},
    "train": [
      dict(arch="t5-base", batch=64, inputs=512, targets=128, variant="gqa", kv_heads=4,
           remat="none", forms=("einsum", "dot_product", "cudnn")),
      dict(LLAMA_1B, remat="dots", forms=FORMS),
    ],
    "steps": 10,
    "peak": [dict(LLAMA_1B, **MEMORY_OPTIONS)],
    "decode": {"arch": "llama-1b", "contexts": (4096, 16384), "batch": 8, "new_tokens": 32},
    "quality": {"config": "configs/llama_tiny.py", "steps": 300},
  },
  "smoke": {
    "dtype": "float32",
    "agree": {"t5": "tiny", "llama": "llama-tiny", "length": 640, "batch": 2},
    "train": [
      dict(arch="tiny", batch=4, inputs=32, targets=8, variant="gqa", kv_heads=2,
           remat="none", forms=("einsum", "cudnn")),
      dict(LLAMA_TINY, remat="dots", forms=("einsum", "blockwise")),
    ],
    "steps": 2,
    "peak": [dict(LLAMA_TINY, **MEMORY_OPTIONS)],
    "decode": {"arch": "llama-tiny", "contexts": (64,), "batch": 2, "new_tokens": 4},
    "quality": {"config": "configs/tiny.py", "steps": 4},
  },
}  # fmt: skip
PARTS = ("agree", "train", "peak", "decode", "quality")


# ------------------------------------------------------------------------------- helpers ----
def run_config(row: dict, form: str, dtype: str):
  """The training config of a train row with attention `form` (what the trainer and the
  planner take)."""
  from wgqa_jax.training.config import base_config

  c = base_config()
  c.model.arch = row["arch"]
  c.model.dtype = dtype
  c.model.attention = form
  c.model.remat = row["remat"]
  c.model.scan_layers = True
  c.model.param_dtype = row.get("param_dtype", "float32")
  c.optim.optimizer = row.get("optimizer", "adamw")
  c.grouping.variant = row["variant"]
  c.grouping.kv_heads = row["kv_heads"]
  c.data.max_input_length = row["inputs"]
  c.data.max_target_length = row["targets"]
  c.optim.batch_size = row["batch"]
  c.optim.num_train_steps = 1000
  c.mesh.data = 1
  if row["arch"].startswith("llama"):
    c.data.objective = "causal_lm"
    c.data.dataset = "python_stdlib"  # never read: the rows are random (random_rows)
    c.optim.loss_on = "all"
  return c


def compiled_step(c):
  """(train step compiled on this process's devices, its state, a batch, the model config):
  the planner's own construction (wgqa_jax.lab.plan), random params of the converted model."""
  import jax
  import jax.numpy as jnp

  from wgqa_jax.lab import plan
  from wgqa_jax.models import family_of
  from wgqa_jax.store.resolve import resolve
  from wgqa_jax.training import preflight, steps

  cfg = plan.model_config(c, resolve(c.model.init_from, c.model.arch))
  cfg = cfg.replace(attention=c.model.attention)  # the planner's CPU stand-in for cudnn undone
  mesh = preflight.make_mesh(c)
  tx, _ = steps.make_optimizer(c.optim, c.optim.num_train_steps)
  shard = steps.state_shardings(cfg, tx, mesh, c.optim.offload_state)
  init = jax.jit(lambda k: family_of(cfg).init_params(cfg, k), out_shardings=shard["params"])
  state = steps.init_state(init(jax.random.PRNGKey(0)), tx, shard)
  shapes = plan.abstract_batch(c, mesh)
  batch = {k: jax.device_put(v, shapes[k].sharding) for k, v in random_rows(shapes, cfg).items()}
  step = steps.compile_train_step(cfg, c.optim, tx, shard, mesh)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch, jnp.zeros((2,), jnp.uint32)).compile()
  return compiled, state, batch, cfg, mesh, time.perf_counter() - t0


def random_rows(shapes: dict, cfg, pad_tail: int = 0) -> dict:
  """Random token rows of the pipeline's keys and shapes (wgqa_jax.lab.plan.abstract_batch): one
  document a row (causal_lm), the last `pad_tail` tokens of row 0 padding."""
  import numpy as np

  rng = np.random.default_rng(0)
  out = {}
  for k, v in shapes.items():
    if k.endswith("segment_ids"):
      x = np.ones(v.shape, np.int32)
    elif k.endswith("positions"):
      x = np.broadcast_to(np.arange(v.shape[1], dtype=np.int32), v.shape).copy()
    else:
      x = rng.integers(3, min(cfg.vocab_size, 30000), v.shape).astype(np.int32)
    if pad_tail:
      x[0, -pad_tail:] = 0
    out[k] = x
  return out


def model_flops_per_step(cfg, c) -> float:
  """6 x matmul params x tokens + attention's score and value matmuls (PaLM's count, the one
  MFU is quoted in; remat's recomputation not counted)."""
  import jax

  from wgqa_jax.models import family_of

  shapes = family_of(cfg).param_shapes(cfg)
  b, s, t = c.optim.batch_size, c.data.max_input_length, c.data.max_target_length
  size = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  h, dk = cfg.num_heads, cfg.head_dim
  if "encoder" in shapes:  # T5: the encoder reads s tokens, the decoder t (+ cross to s)
    enc, dec = size(shapes["encoder"]), size(shapes["decoder"])
    head = cfg.d_model * cfg.vocab_size
    attention = (
      12 * h * dk * (cfg.num_encoder_layers * s * s + cfg.num_decoder_layers * (t * t + t * s))
    )
    return b * (6 * (enc * s + (dec + head) * t) + attention)
    # (the shared embedding's lookup is not a matmul)
  n = t + s
  matmul = size(shapes) - size(shapes.get("embed", {}))
  return b * (6 * matmul * n + 12 * cfg.num_layers * h * dk * n * n)


def refusal(c) -> str | None:
  """Why this run cannot use its attention form here (one line), or None."""
  import jax

  from wgqa_jax.core.errors import UserError
  from wgqa_jax.store.resolve import resolve
  from wgqa_jax.training import preflight

  try:
    preflight.attention_notes(
      c, resolve(c.model.init_from, c.model.arch).cfg, jax.default_backend()
    )
  except UserError as e:
    return str(e)
  return None


# ------------------------------------------------------------------------------ sections ----
def section_agree(p: dict) -> list[str]:
  """Each form's loss and gradients against einsum's, on this device."""
  import jax
  import jax.numpy as jnp

  from wgqa_jax.models import family_of
  from wgqa_jax.models.attention import cudnn_refusal
  from wgqa_jax.models.family import preset
  from wgqa_jax.training import objectives

  a, dtype = p["agree"], p["dtype"]
  rows = [
    "| model | form | loss | loss vs einsum | gradients vs einsum (relative norm) |",
    "|---|---|---|---|---|",
  ]
  for arch in (a["t5"], a["llama"]):
    cfg = preset(arch).replace(dtype=dtype)
    params = family_of(cfg).init_params(cfg, jax.random.PRNGKey(0))
    llama = arch.startswith("llama")
    n = a["length"]
    keys = (
      {"tokens": n, "segment_ids": n, "positions": n} if llama else {"inputs": n, "targets": 64}
    )
    shapes = {k: jax.ShapeDtypeStruct((a["batch"], m), jnp.int32) for k, m in keys.items()}
    batch = {k: jnp.asarray(v) for k, v in random_rows(shapes, cfg, pad_tail=37).items()}
    loss_on = "all" if llama else None

    def loss_and_grads(form):
      c = cfg.replace(attention=form)
      f = lambda p_: objectives.loss_sums(p_, batch, None, c, 0.0, 0.0, False, loss_on)[0]
      return jax.jit(jax.value_and_grad(f))(params)

    ref_loss, ref_grads = loss_and_grads("einsum")
    ref_norm = float(
      jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(ref_grads)))
    )
    for form in FORMS:
      if form == "cudnn" and (why := cudnn_refusal(dtype, cfg.head_dim, jax.default_backend())):
        rows.append(f"| {arch} | {form} | refused: {why} | | |")
        continue
      loss, grads = loss_and_grads(form)
      diff = sum(
        jnp.sum((x.astype(jnp.float32) - y.astype(jnp.float32)) ** 2)
        for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True)
      )
      loss_err = abs(float(loss - ref_loss)) / abs(float(ref_loss))
      rows.append(
        f"| {arch} | {form} | {float(loss):.6g} | {loss_err:.2e} "
        f"| {math.sqrt(float(diff)) / ref_norm:.2e} |"
      )
      print(rows[-1], flush=True)
  return rows + [
    "",
    f"{dtype} compute; sums of token losses over {a['batch']} rows of {a['length']} tokens "
    "(some padded). Tolerance: 1e-5 in float32 (tests/training/test_objectives.py asserts it "
    "on CPU), about 1e-2 in bfloat16 (the forms round in different places).",
  ]


def section_train(p: dict) -> list[str]:
  import jax

  rows = [
    "| model | batch | form | compile s | step s | tokens/s | TFLOP/s | MFU |",
    "|---|---|---|---|---|---|---|---|",
  ]
  from run import peak_tflops  # benchmarks/run.py: the devices' dense bf16 peaks

  peak = peak_tflops()
  for row in p["train"]:
    for form in row["forms"]:
      c = run_config(row, form, p["dtype"])
      shape = f"{row['batch']} x {row['inputs']}+{row['targets']}"
      if why := refusal(c):
        rows.append(f"| {row['arch']} | {shape} | {form} | refused: {why} | | | | |")
        print(rows[-1], flush=True)
        continue
      compiled, state, batch, cfg, mesh, compile_s = compiled_step(c)
      key = jax.numpy.zeros((2,), jax.numpy.uint32)
      with jax.set_mesh(mesh):
        for _ in range(2):  # warm up
          state, out = compiled(state, batch, key)
        jax.block_until_ready(out["loss"])
        t0 = time.perf_counter()
        for _ in range(p["steps"]):
          state, out = compiled(state, batch, key)
        jax.block_until_ready(out["loss"])
      dt = (time.perf_counter() - t0) / p["steps"]
      tokens = row["batch"] * (row["inputs"] + row["targets"])
      tflops = model_flops_per_step(cfg, c) / dt / 1e12
      mfu = f"{tflops / peak:.1%}" if peak else "-"
      rows.append(
        f"| {row['arch']} | {shape} | {form} | {compile_s:.1f} | {dt:.4f} | {tokens / dt:,.0f} "
        f"| {tflops:.1f} | {mfu} |"
      )
      print(rows[-1], flush=True)
      del state, compiled
  return rows + [
    "",
    f"{p['dtype']} compute, float32 params, AdamW, scanned layers; the mean of {p['steps']} steps "
    "after 2 warm-up steps. MFU: PaLM's model FLOPs (6 x matmul params x tokens + attention's "
    f"matmuls; remat not counted) over the device's dense bf16 peak ({peak or '?'} TFLOP/s).",
  ]


def peak_of_row(row: dict, form: str, dtype: str) -> dict:
  """In this (fresh) process: a few steps of the row; the device's peak bytes in use."""
  import jax

  c = run_config(row, form, dtype)
  compiled, state, batch, cfg, mesh, _ = compiled_step(c)
  key = jax.numpy.zeros((2,), jax.numpy.uint32)
  with jax.set_mesh(mesh):
    for _ in range(3):
      state, out = compiled(state, batch, key)
    jax.block_until_ready(out["loss"])
  stats = jax.devices()[0].memory_stats() or {}
  mem = compiled.memory_analysis()
  return {
    "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
    "compiled_total": mem.argument_size_in_bytes
    + mem.temp_size_in_bytes
    + mem.output_size_in_bytes
    - mem.alias_size_in_bytes,
  }


def plan_of_row(row: dict, form: str, dtype: str) -> dict:
  """The planner's figure for the row (run in a fresh CPU process: use_fake_devices first)."""
  from wgqa_jax.lab import plan

  plan.use_fake_devices(1)
  return plan.plan(run_config(row, form, dtype))


def in_fresh_process(part: str, preset: str, index: int, cpu: bool) -> dict:
  env = dict(os.environ)
  if cpu:
    env["JAX_PLATFORMS"] = "cpu"
  r = subprocess.run(
    [sys.executable, os.path.abspath(__file__), f"--preset={preset}", f"--child={part}:{index}"],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=900,
  )
  if r.returncode:
    raise RuntimeError(f"{part} {index}: {r.stderr.strip().splitlines()[-1:]}")
  return json.loads(r.stdout.strip().splitlines()[-1])


def section_peak(p: dict, preset: str) -> list[str]:
  rows = [
    "| run | planner (XLA:CPU) GiB | compiled here GiB | peak in use GiB | planner vs peak |",
    "|---|---|---|---|---|",
  ]
  gib = 2**30
  for i, row in enumerate(p["peak"]):
    form = row["forms"][0]
    what = (
      f"{row['arch']} {row['batch']} x {row['inputs']}+{row['targets']}, {form}, remat "
      f"{row['remat']}, {row.get('param_dtype', 'float32')} params, {row.get('optimizer', 'adamw')}"
    )
    planned = in_fresh_process("plan", preset, i, cpu=True)["per_device_bytes"]["total"]
    here = in_fresh_process("peak", preset, i, cpu=False)
    peak = here["peak_bytes_in_use"]
    rows.append(
      f"| {what} | {planned / gib:.2f} | {here['compiled_total'] / gib:.2f} | "
      + (f"{peak / gib:.2f} | {planned / peak - 1:+.1%} |" if peak else "- | (no memory_stats) |")
    )
    print(rows[-1], flush=True)
  return rows + [
    "",
    "Planner: `wgqa_jax.lab.plan` on one fake CPU device; compiled here: XLA's memory analysis "
    "of the same step on this device; peak: `device.memory_stats()['peak_bytes_in_use']` after "
    "3 steps, in a fresh process (the CPU has no such statistic).",
  ]


def section_decode(p: dict) -> list[str]:
  import jax
  from llama import best_of, decode_steps  # benchmarks/llama.py

  from wgqa_jax.grouping import variants
  from wgqa_jax.models import family_of
  from wgqa_jax.models.family import preset

  d = p["decode"]
  cfg = preset(d["arch"]).replace(dtype=p["dtype"])
  mha = jax.jit(lambda k: family_of(cfg).init_params(cfg, k))(jax.random.PRNGKey(0))
  h = cfg.num_heads
  rows = [
    "| context | batch | variant | KV cache | decode tokens/s | vs MHA |",
    "|---|---|---|---|---|---|",
  ]
  for context in d["contexts"]:
    base = None
    mid = h // 4 if h >= 8 else h // 2
    for name, g in (("MHA", h), (f"GQA-{mid}", mid), ("MQA", 1)):
      params, gcfg = (
        (mha, cfg) if g == h else variants.from_mha(mha, cfg, "mqa" if g == 1 else "gqa", g)
      )
      params = jax.device_put(params)
      rate = (
        d["batch"]
        * d["new_tokens"]
        / best_of(lambda: decode_steps(params, gcfg, d["batch"], context, d["new_tokens"]), n=3)
      )
      itemsize = 2 if p["dtype"] == "bfloat16" else 4
      cache = 2 * cfg.num_layers * d["batch"] * (context + d["new_tokens"]) * g * cfg.head_dim
      base = base or rate
      rows.append(
        f"| {context} | {d['batch']} | {name} | {cache * itemsize / 2**30:.2f} GiB | "
        f"{rate:,.0f} | {rate / base:.2f}x |"
      )
      print(rows[-1], flush=True)
  return rows + [
    "",
    f"{d['arch']}, {p['dtype']}: {d['new_tokens']} cached greedy steps after a cache holding "
    "the context (benchmarks/llama.py's decode_steps; best of 3).",
  ]


def section_quality(p: dict) -> list[str]:
  import importlib.util

  import memory_options  # benchmarks/memory_options.py

  q = p["quality"]
  spec = importlib.util.spec_from_file_location("run_config", os.path.join(REPO, q["config"]))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  with tempfile.TemporaryDirectory() as work:
    runs = memory_options.compare(c, q["steps"], work)
    at = sorted({max(1, q["steps"] // 10), q["steps"] // 2, q["steps"]} - {0})
    at = [s for s in at if s % c.log_every == 0 or s == q["steps"]]
    return memory_options.table(runs, at) + [
      "",
      f"`{q['config']}`, {q['steps']} steps per option (benchmarks/memory_options.py).",
    ]


# ---------------------------------------------------------------------------------- main ----
FLAGS = cli.flag_set()
flags.DEFINE_enum("preset", "full", list(PRESETS), "full: a GPU; smoke: CPU, CI", flag_values=FLAGS)
flags.DEFINE_string("parts", ",".join(PARTS), f"sections to run, of {PARTS}", flag_values=FLAGS)
flags.DEFINE_string(
  "out", None, "default: benchmarks/RESULTS_gpu.md (RESULTS_gpu_smoke.md)", flag_values=FLAGS
)
flags.DEFINE_string("child", None, "internal: PART:INDEX in a fresh process", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
  cli.parse(FLAGS, argv, "benchmarks/gpu.py")
  p = PRESETS[FLAGS.preset]
  if FLAGS.child:
    part, index = FLAGS.child.split(":")
    row = p["peak"][int(index)]
    fn = plan_of_row if part == "plan" else peak_of_row
    print(json.dumps(fn(row, row["forms"][0], p["dtype"])))
    return 0
  parts = [x for x in FLAGS.parts.split(",") if x]
  if unknown := sorted(set(parts) - set(PARTS)):
    from wgqa_jax.core.errors import UserError

    raise UserError(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
  out = FLAGS.out or os.path.join(
    REPO, "benchmarks", "RESULTS_gpu.md" if FLAGS.preset == "full" else "RESULTS_gpu_smoke.md"
  )
  command = "python benchmarks/gpu.py" + "".join(
    f" {a}" for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--out")
  )
  titles = {
    "agree": "1. Attention forms agree",
    "train": "2. Train step throughput",
    "peak": "3. Peak memory against the planner",
    "decode": "4. Cached decoding",
    "quality": "5. Memory options: loss against float32 AdamW",
  }
  runs = {
    "agree": lambda: section_agree(p),
    "train": lambda: section_train(p),
    "peak": lambda: section_peak(p, FLAGS.preset),
    "decode": lambda: section_decode(p),
    "quality": lambda: section_quality(p),
  }
  # peak first, in fresh processes, before this one takes the device (JAX preallocates 75% of
  # a GPU's memory for the process that first uses it)
  done: dict[str, list[str]] = {}
  for part in sorted((x for x in PARTS if x in parts), key=lambda x: x != "peak"):
    t0 = time.time()
    print(f"== {titles[part]}", flush=True)
    done[part] = runs[part]() + ["", f"({time.time() - t0:.0f} s)"]
    import jax

    dev = jax.devices()[0]
    lines = [
      "# GPU measurements",
      "",
      f"{datetime.date.today()}, {dev.platform}: {dev.device_kind} x {jax.device_count()}, "
      f"jax {jax.__version__}. Command: `{command}`",
    ]
    for name in PARTS:
      if name in done:
        lines += ["", f"## {titles[name]}", "", *done[name]]
    with open(out, "w") as f:  # after every section: a run cut short keeps what it finished
      f.write("\n".join(lines) + "\n")
  print(f"-> {out}")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
