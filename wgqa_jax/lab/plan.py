"""Will my run fit? Compile the real train step for N devices and read XLA's memory analysis
(the command line: wgqa_jax/tools/plan.py).

The planner fakes N CPU devices before JAX starts, builds the train state and a batch as shapes
only (no weights are read: the model config comes from the preset, our params dir's config or a
HF config.json), builds the model config through the trainer's own conversion
(training.model_setup: per-module KV heads of a layer_budget=proxy run included, from the
calibration statistics a run of it wrote), compiles the very step `wgqa_jax.train` runs
(sharded state under the config's sharding rules, remat, scanned layers, grad accumulation;
the accelerator's matmul layout), and returns a table and one JSON line:

    {"params": ..., "mesh": {...}, "per_device_bytes": {"arguments": ..., "temp": ...,
     "total": ...}, "kv_cache_bytes_per_token": ..., "compile_s": ..., "fits": true|false}

`total` is what one device holds at the step's peak: its shard of the state and batch, the
step's temporaries and outputs not written in place (an optimizer state offloaded to host
memory, optim.offload_state, is reported as `host` and not counted). `fits` compares it with the
usable part of the device's memory (device_memory_gib x usable_fraction: JAX on GPUs
preallocates 75% unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise; set it to match).
XLA:CPU's figures are close to, not the same as, a GPU's (CPU_CAVEAT); the planner compiles
as a GPU would where the two differ most in memory (GPU_LIKE_FLAGS), and a cuDNN run as
blockwise (ATTENTION_NOTE).
"""

from __future__ import annotations

import math
import os
import time

from wgqa_jax.core.errors import UserError

# Nothing here imports JAX at module level: the command line fakes N devices (use_fake_devices)
# before JAX starts.
GIB = 2**30


# XLA:CPU as a GPU would compile the step, where the two differ in memory:
# - XLA:CPU computes bfloat16 dots in float32, and loop-invariant code motion then hoists the
#   float32 conversion of every layer's weights out of the scanned loop: a float32 copy of all
#   stacked params that a GPU, whose bf16 dots are native, never makes;
# - its default scheduler orders independent work to run concurrently on the host's cores,
#   keeping more buffers alive; a GPU's runs one stream and schedules for memory.
# Llama-2-7B cut to 8 layers, bf16, one device: 16.7 GiB of temporaries, 14.7 without the
# hoisting, 10.8 with the memory-minded schedule too.
GPU_LIKE_FLAGS = (
  "--xla_disable_hlo_passes=while-loop-invariant-code-motion",
  "--xla_cpu_enable_concurrency_optimized_scheduler=false",
)


def use_fake_devices(n: int) -> None:
  """N CPU devices for this process; must run before JAX initialises its backends."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  flags_ = [
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith(
      ("--xla_force_host_platform_device_count", *(g.split("=")[0] for g in GPU_LIKE_FLAGS))
    )
  ]
  os.environ["XLA_FLAGS"] = " ".join(
    flags_ + [f"--xla_force_host_platform_device_count={n}", *GPU_LIKE_FLAGS]
  )
  import jax

  jax.config.update("jax_platforms", "cpu")
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # backends already up (plan() called in-process): checked by plan()
    pass


# what the planner compiled, and what a GPU would run instead (the CPU cannot lower cuDNN)
ATTENTION_NOTE = {
  "einsum": "einsum (logits of every layer materialised, here and on a GPU)",
  "dot_product": (
    "dot_product: its XLA form here (logits materialised); on a GPU, in bf16 with heads of at "
    "most 128 dims, cuDNN flash attention, which holds none: there this figure is an upper bound"
  ),
  "cudnn": (
    "cudnn: compiled here as blockwise (XLA:CPU cannot lower cuDNN); cuDNN flash attention "
    "holds no logits array either, so a GPU's figure should be close"
  ),
  "blockwise": "blockwise: keys in blocks of 512, no logits array for the whole sequence",
}
# How far a figure from XLA:CPU may be from a GPU's, said with every plan. Measured on a GPU by
# benchmarks/gpu.py (benchmarks/RESULTS_gpu.md) when a session had one.
CPU_CAVEAT = (
  "XLA:CPU's buffers, not a GPU's: fusion, collectives' buffers and cuDNN workspaces differ "
  "(benchmarks/gpu.py compares a GPU's peak with this figure); leave the usable margin"
)
OFFLOAD_CAVEAT = (
  "the optimizer state lives in host memory and is not counted; on a GPU the update holds "
  "the state's leaves it works on in device memory (XLA:CPU has one memory and cannot show "
  "them: benchmarks/gpu.py measures the peak)"
)


def model_config(c, source, calibration_file: str | None = None):
  """The model config the run would train: the trainer's own conversion
  (training.model_setup.converted_config) of the source's config, with the run's numerics and
  layer options. A layer_budget=proxy run reads its per-module KV heads from the calibration
  statistics a run of it wrote (calibration_file) and the source's K/V weights. The planned
  program is the accelerator's: no CPU-only matmul layout."""
  from wgqa_jax.grouping import variants
  from wgqa_jax.training import calibration, model_setup

  cfg, read, stats = source.cfg, None, None
  proxy = c.grouping.layer_budget == "proxy" and variants.is_mha(source.cfg)
  if calibration_file and not proxy:
    raise UserError(
      "--calibration is read only to plan grouping.layer_budget=proxy on an MHA model (its "
      "per-module KV heads); this plan does not use it"
    )
  if proxy:
    if not calibration_file:
      raise UserError(
        "grouping.layer_budget=proxy spreads the KV heads by calibration error on "
        "the run's data: pass --calibration=WORKDIR/calibration.npz (a training "
        "run writes it before its first step), or plan without layer_budget"
      )
    reader = model_setup.open_weights(c, source)
    cfg, read, stats = reader.cfg, reader.read, calibration.load(calibration_file, reader.cfg)
  cfg, _ = model_setup.converted_config(c, cfg, read, stats)
  cfg = model_setup.for_training(cfg, c).replace(transpose_weight_grad_on_cpu=False)
  # cuDNN's form holds no logits array: blockwise is what XLA:CPU can compile like it
  return cfg.replace(attention="blockwise") if cfg.attention == "cudnn" else cfg


def abstract_batch(c, mesh):
  """The pipeline's rows for one step (wgqa_jax.data.pipeline), as sharded shapes."""
  import jax
  import jax.numpy as jnp

  from wgqa_jax.core import sharding
  from wgqa_jax.data import text_rows

  d, b = c.data, c.optim.batch_size
  lengths = text_rows.row_lengths(d.objective, d.max_input_length, d.max_target_length)
  if d.pack and d.objective == "pairs":
    lengths.update(
      {
        f"{side}_{kind}": lengths[side]
        for side in ("inputs", "targets")
        for kind in ("segment_ids", "positions")
      }
    )
  return {
    k: jax.ShapeDtypeStruct((b, n), jnp.int32, sharding=sharding.batch_sharding(mesh))
    for k, n in lengths.items()
  }


def plan(
  c,
  device_memory_gib: float = 80.0,
  usable_fraction: float = 0.9,
  calibration_file: str | None = None,
) -> dict:
  """Compile the train step of config `c` on this process's devices; the planner's result."""
  from wgqa_jax.core import sharding
  from wgqa_jax.training import preflight
  from wgqa_jax.training.validation import validate

  validate(c)
  with sharding.use_rules(preflight.sharding_rules(c)):
    return _plan(c, device_memory_gib, usable_fraction, calibration_file)


def _plan(c, device_memory_gib: float, usable_fraction: float, calibration_file) -> dict:
  import jax

  from wgqa_jax import decoding
  from wgqa_jax.grouping import variants
  from wgqa_jax.store.resolve import resolve
  from wgqa_jax.training import preflight, steps

  source = resolve(c.model.init_from, c.model.arch)  # the config alone (a hub id: config.json)
  preflight.check_model(c, source.cfg)
  cfg = model_config(c, source, calibration_file)
  mesh = preflight.make_mesh(c)
  tx, _ = steps.make_optimizer(c.optim, c.optim.num_train_steps or 1000)
  shardings = steps.state_shardings(cfg, tx, mesh, c.optim.offload_state)
  state = steps.abstract_state(cfg, tx, shardings)
  batch = abstract_batch(c, mesh)
  step = steps.compile_train_step(cfg, c.optim, tx, shardings, mesh)
  per_device = lambda tree: sum(
    math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
  )
  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch, jax.ShapeDtypeStruct((2,), jax.numpy.uint32)).compile()
  compile_s = time.time() - t0
  arguments, temp, outputs = peak_bytes(compiled)
  opt_bytes = per_device(state["opt_state"])
  host = opt_bytes if c.optim.offload_state else 0  # XLA:CPU counts it among the arguments
  total = arguments - host + temp + outputs
  calibration = None
  if variants.get(c.grouping.variant).calibrated and variants.is_mha(source.cfg):
    calibration = sum(calibration_peak(c, source.cfg, mesh, batch))
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"]))
  usable = device_memory_gib * usable_fraction * GIB
  return {
    "model": c.model.arch if source.is_random else c.model.init_from,
    "grouping": cfg.grouping.describe(cfg.num_heads),
    "params": n_params,
    "kv_cache_bytes_per_token": decoding.cache_bytes_per_token(cfg),
    "mesh": dict(mesh.shape),
    "batch": {k: list(v.shape) for k, v in batch.items()},
    "grad_accum_steps": c.optim.grad_accum_steps,
    "remat": cfg.remat,
    # MLA attends over its latent in the einsum form, whatever model.attention asks
    "attention": "einsum" if cfg.grouping.latent else c.model.attention,
    "scan_layers": cfg.scan_layers,
    "dtype": cfg.dtype,
    "param_dtype": cfg.param_dtype,
    "optimizer": c.optim.optimizer,
    "offload_state": c.optim.offload_state,
    "per_device_bytes": {
      "params": per_device(state["params"]),
      "opt_state": opt_bytes,
      "host": host,
      "arguments": arguments - host,
      "temp": temp,
      "outputs": outputs,
      "total": total,
    },
    # a calibrated variant first runs the MHA model on a batch (wgqa_jax.training.calibration)
    "calibration_per_device_bytes": calibration,
    "compile_s": round(compile_s, 1),
    "device_memory_gib": device_memory_gib,
    "usable_fraction": usable_fraction,
    "fits": bool(max(total, calibration or 0) <= usable),
  }


def peak_bytes(compiled) -> tuple[int, int, int]:
  """(arguments, temporaries, outputs not written in place) one device holds at a compiled
  program's peak, from XLA's memory analysis."""
  mem = compiled.memory_analysis()
  return (
    mem.argument_size_in_bytes,
    mem.temp_size_in_bytes,
    mem.output_size_in_bytes - mem.alias_size_in_bytes,
  )


def calibration_peak(c, source_cfg, mesh, batch) -> tuple[int, int, int]:
  """peak_bytes of the calibration step a calibrated variant runs before converting: the MHA
  model, its params sharded as the run places them, on one batch."""
  import jax

  from wgqa_jax.core import sharding
  from wgqa_jax.models import family_of
  from wgqa_jax.training import calibration, model_setup, steps

  cfg = model_setup.calibration_config(source_cfg, c).replace(transpose_weight_grad_on_cpu=False)
  params = sharding.abstract(family_of(cfg).param_shapes(cfg), steps.param_shardings(cfg, mesh))
  with jax.set_mesh(mesh):
    return peak_bytes(calibration.grams_step(cfg).lower(params, batch).compile())


def table(r: dict) -> str:
  b = r["per_device_bytes"]
  gib = lambda x: f"{x / GIB:.2f} GiB"
  rows = [
    (
      "model",
      f"{r['model']} ({r['grouping']}), {r['params'] / 1e9:.3f}B params, {r['dtype']} compute",
    ),
    ("mesh", " x ".join(f"{k} {v}" for k, v in r["mesh"].items())),
    ("KV cache / token", f"{r['kv_cache_bytes_per_token']} bytes"),
    (
      "batch",
      ", ".join(f"{k} {v[0]} x {v[1]}" for k, v in r["batch"].items())
      + (f" in {r['grad_accum_steps']} micro-batches" if r["grad_accum_steps"] > 1 else ""),
    ),
    ("layers", f"remat {r['remat']}, {'scanned' if r['scan_layers'] else 'unrolled'}"),
    ("attention", ATTENTION_NOTE[r["attention"]]),
    ("params / device", f"{gib(b['params'])} ({r['param_dtype']})"),
    (
      "optimizer state / device",
      f"{gib(b['opt_state'])} ({r['optimizer']}"
      + (", in host memory: pinned_host)" if r["offload_state"] else ")"),
    ),
    ("arguments / device", gib(b["arguments"])),
    ("temporaries / device", gib(b["temp"])),
    ("outputs / device", gib(b["outputs"])),
    ("total / device", gib(b["total"])),
    *(
      [
        (
          "calibration / device",
          f"{gib(r['calibration_per_device_bytes'])} (the MHA "
          f"model on one batch, before converting)",
        )
      ]
      if r.get("calibration_per_device_bytes") is not None
      else []
    ),
    (
      "usable / device",
      f"{r['device_memory_gib'] * r['usable_fraction']:.1f} GiB "
      f"({r['usable_fraction']:.0%} of {r['device_memory_gib']:g})",
    ),
    ("compile", f"{r['compile_s']:.1f} s"),
    ("fits", "yes" if r["fits"] else "NO"),
    ("note", CPU_CAVEAT),
    *([("offloaded", OFFLOAD_CAVEAT)] if r["offload_state"] else []),
  ]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
