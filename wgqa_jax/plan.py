"""Will my run fit? Compile the real train step for N devices and read XLA's memory analysis.

    python -m wgqa_jax.plan --config=configs/scale.py:llama-2-7b --devices=8 \
        --config.grouping.variant=wgqa --config.grouping.kv_heads=8 [--device_memory_gib=80]

The --config flags are exactly train's. The planner fakes N CPU devices before JAX starts, builds
the train state and a batch as shapes only (no weights are read: the model config comes from the
preset, our params dir's config or a HF config.json), compiles the very step `wgqa_jax.train` runs
(sharded state, remat, scanned layers, grad accumulation; the accelerator's matmul layout), and
prints a table and one JSON line:

    {"params": ..., "mesh": {...}, "per_device_bytes": {"arguments": ..., "temp": ...,
     "total": ...}, "compile_s": ..., "fits": true|false}

`total` is what one device holds at the step's peak: its shard of the state and batch, the
step's temporaries and outputs not written in place. `fits` compares it with the usable part of
the device's memory (device_memory_gib x usable_fraction: JAX on GPUs preallocates 75% unless
XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise; set it to match). XLA:CPU's figures are close to,
not the same as, a GPU's (fusion and collective buffers differ): leave a margin.
"""
from __future__ import annotations

import json
import math
import os
import time

from absl import flags
from ml_collections import config_flags

from wgqa_jax import cli

FLAGS = cli.flag_set()
_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (as train)",
                                          lock_config=True, flag_values=FLAGS)
_DEVICES = flags.DEFINE_integer("devices", None, "number of devices to plan for",
                                flag_values=FLAGS)
_MEMORY = flags.DEFINE_float("device_memory_gib", 80.0, "memory of one device, GiB "
                             "(H100: 80, H200: 141, A100: 40 or 80)", flag_values=FLAGS)
_USABLE = flags.DEFINE_float("usable_fraction", 0.9, "the part of it a run may use "
                             "(XLA_PYTHON_CLIENT_MEM_FRACTION)", flag_values=FLAGS)

GIB = 2 ** 30


def use_fake_devices(n: int) -> None:
  """N CPU devices for this process; must run before JAX initialises its backends."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  flags_ = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags_ + [f"--xla_force_host_platform_device_count={n}"])
  import jax
  jax.config.update("jax_platforms", "cpu")
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # backends already up (plan() called in-process): checked by plan()
    pass


def model_config(c, source_cfg):
  """The model config the run would train, from shapes alone: the source's (preset, our params
  dir, HF config.json), grouped as the config says, with the run's numerics and layer options.
  The planned program is the accelerator's: no CPU-only matmul layout."""
  from wgqa_jax import train, variants
  cfg = source_cfg
  if variants.is_mha(cfg):
    cfg = variants.grouped_config(cfg, c.grouping.variant, c.grouping.kv_heads,
                                  **variants.options(c.grouping))
  cfg = train.for_training(train.with_run_numerics(cfg, c), c)
  return cfg.replace(transpose_weight_grad_on_cpu=False)


def abstract_batch(c, mesh):
  """The pipeline's rows for one step (wgqa_jax.pipeline), as sharded shapes."""
  import jax
  import jax.numpy as jnp
  from wgqa_jax import sharding
  from wgqa_jax import text_rows
  d, b = c.data, c.optim.batch_size
  lengths = text_rows.row_lengths(d.objective, d.max_input_length, d.max_target_length)
  if d.pack and d.objective == "pairs":
    lengths.update({f"{side}_{kind}": lengths[side] for side in ("inputs", "targets")
                    for kind in ("segment_ids", "positions")})
  return {k: jax.ShapeDtypeStruct((b, n), jnp.int32, sharding=sharding.batch_sharding(mesh))
          for k, n in lengths.items()}


def plan(c, device_memory_gib: float = 80.0, usable_fraction: float = 0.9) -> dict:
  """Compile the train step of config `c` on this process's devices; the planner's result."""
  import jax
  from wgqa_jax import model_source, train, train_step, variants
  from wgqa_jax.train_config import validate
  validate(c)
  source = model_source.open_source(c.model)  # the config alone (a hub id: config.json)
  train.check_model(c, source.cfg)
  cfg = model_config(c, source.cfg)
  mesh = train.make_mesh(c)
  tx, _ = train_step.make_optimizer(c.optim, c.optim.num_train_steps or 1000)
  shardings = train_step.state_shardings(cfg, tx, mesh)
  state = train_step.abstract_state(cfg, tx, shardings)
  batch = abstract_batch(c, mesh)
  step = train_step.compile_train_step(cfg, c.optim, tx, shardings, mesh)
  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch, jax.ShapeDtypeStruct((2,), jax.numpy.uint32)).compile()
  compile_s = time.time() - t0
  arguments, temp, outputs = peak_bytes(compiled)
  total = arguments + temp + outputs
  calibration = None
  if variants.get(c.grouping.variant).calibrated and variants.is_mha(source.cfg):
    calibration = sum(calibration_peak(c, source.cfg, mesh, batch))
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"]))
  per_device = lambda tree: sum(
      math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))
  usable = device_memory_gib * usable_fraction * GIB
  return {
      "model": c.model.arch if source.is_random else c.model.init_from,
      "grouping": cfg.grouping.describe(cfg.num_heads),
      "params": n_params,
      "mesh": dict(mesh.shape),
      "batch": {k: list(v.shape) for k, v in batch.items()},
      "grad_accum_steps": c.optim.grad_accum_steps,
      "remat": cfg.remat, "scan_layers": cfg.scan_layers, "dtype": cfg.dtype,
      "per_device_bytes": {"params": per_device(state["params"]),
                           "opt_state": per_device(state["opt_state"]),
                           "arguments": arguments, "temp": temp, "outputs": outputs,
                           "total": total},
      # a calibrated variant first runs the MHA model on a batch (wgqa_jax.calibration)
      "calibration_per_device_bytes": calibration,
      "compile_s": round(compile_s, 1),
      "device_memory_gib": device_memory_gib, "usable_fraction": usable_fraction,
      "fits": bool(max(total, calibration or 0) <= usable),
  }


def peak_bytes(compiled) -> tuple[int, int, int]:
  """(arguments, temporaries, outputs not written in place) one device holds at a compiled
  program's peak, from XLA's memory analysis."""
  mem = compiled.memory_analysis()
  return (mem.argument_size_in_bytes, mem.temp_size_in_bytes,
          mem.output_size_in_bytes - mem.alias_size_in_bytes)


def calibration_peak(c, source_cfg, mesh, batch) -> tuple[int, int, int]:
  """peak_bytes of the calibration step a calibrated variant runs before converting: the MHA
  model, its params sharded as the run places them, on one batch."""
  import jax
  from wgqa_jax import calibration, models, train, train_step
  cfg = train.calibration_config(source_cfg, c).replace(transpose_weight_grad_on_cpu=False)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        models.module_of(cfg).param_shapes(cfg),
                        train_step.param_shardings(cfg, mesh))
  with jax.set_mesh(mesh):
    return peak_bytes(calibration.grams_step(cfg).lower(params, batch).compile())


def table(r: dict) -> str:
  b = r["per_device_bytes"]
  gib = lambda x: f"{x / GIB:.2f} GiB"
  rows = [("model", f"{r['model']} ({r['grouping']}), {r['params'] / 1e9:.3f}B params, "
                    f"{r['dtype']} compute"),
          ("mesh", " x ".join(f"{k} {v}" for k, v in r["mesh"].items())),
          ("batch", ", ".join(f"{k} {v[0]} x {v[1]}" for k, v in r["batch"].items())
           + (f" in {r['grad_accum_steps']} micro-batches" if r["grad_accum_steps"] > 1 else "")),
          ("layers", f"remat {r['remat']}, {'scanned' if r['scan_layers'] else 'unrolled'}"),
          ("params / device", gib(b["params"])), ("optimizer state / device", gib(b["opt_state"])),
          ("arguments / device", gib(b["arguments"])), ("temporaries / device", gib(b["temp"])),
          ("outputs / device", gib(b["outputs"])), ("total / device", gib(b["total"])),
          *([("calibration / device", f"{gib(r['calibration_per_device_bytes'])} (the MHA "
                                      f"model on one batch, before converting)")]
            if r.get("calibration_per_device_bytes") is not None else []),
          ("usable / device", f"{r['device_memory_gib'] * r['usable_fraction']:.1f} GiB "
                              f"({r['usable_fraction']:.0%} of {r['device_memory_gib']:g})"),
          ("compile", f"{r['compile_s']:.1f} s"),
          ("fits", "yes" if r["fits"] else "NO")]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
  cli.parse(FLAGS, argv, "wgqa_jax.plan")
  if _CONFIG.value is None:
    raise ValueError("pass --config=configs/NAME.py (as for wgqa_jax.train)")
  if not _DEVICES.value or _DEVICES.value <= 0:
    raise ValueError("pass --devices=N, the number of accelerators to plan for (N >= 1)")
  if _MEMORY.value <= 0 or not 0 < _USABLE.value <= 1:
    raise ValueError("--device_memory_gib must be positive and --usable_fraction in (0, 1]")
  use_fake_devices(_DEVICES.value)
  import jax
  if jax.device_count() != _DEVICES.value:
    raise ValueError(f"this process already has {jax.device_count()} devices; run the planner "
                     f"in a fresh process to plan for {_DEVICES.value}")
  from absl import logging
  logging.set_verbosity(logging.ERROR)
  result = plan(_CONFIG.value, _MEMORY.value, _USABLE.value)
  print(table(result))
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
