"""python -m wgqa_jax.plan: will my run fit? The real train step compiled for N fake devices,
per-device memory from XLA (the library: wgqa_jax.lab.plan).

    python -m wgqa_jax.plan --config=configs/scale.py:llama-2-7b --devices=8 \
        --config.grouping.variant=wgqa --config.grouping.kv_heads=8 [--device_memory_gib=80]

The --config flags are exactly train's. Prints a table and one JSON line. A
grouping.layer_budget=proxy run also needs --calibration=WORKDIR/calibration.npz (its per-module
KV heads come from the calibration statistics).
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.lab import plan

FLAGS = cli.flag_set()
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "training config file (as train)", lock_config=True, flag_values=FLAGS
)
_DEVICES = flags.DEFINE_integer("devices", None, "number of devices to plan for", flag_values=FLAGS)
_MEMORY = flags.DEFINE_float(
  "device_memory_gib",
  80.0,
  "memory of one device, GiB (H100: 80, H200: 141, A100: 40 or 80)",
  flag_values=FLAGS,
)
_USABLE = flags.DEFINE_float(
  "usable_fraction",
  0.9,
  "the part of it a run may use (XLA_PYTHON_CLIENT_MEM_FRACTION)",
  flag_values=FLAGS,
)
_CALIBRATION = flags.DEFINE_string(
  "calibration",
  None,
  "layer_budget=proxy: the calibration "
  "statistics a run of this config wrote "
  "(WORKDIR/calibration.npz)",
  flag_values=FLAGS,
)


def main(argv: list[str] | None = None) -> int:
  cli.parse(FLAGS, argv, "wgqa_jax.plan")
  if _CONFIG.value is None:
    raise UserError("pass --config=configs/NAME.py (as for wgqa_jax.train)")
  if not _DEVICES.value or _DEVICES.value <= 0:
    raise UserError("pass --devices=N, the number of accelerators to plan for (N >= 1)")
  if _MEMORY.value <= 0 or not 0 < _USABLE.value <= 1:
    raise UserError("--device_memory_gib must be positive and --usable_fraction in (0, 1]")
  plan.use_fake_devices(_DEVICES.value)
  import jax

  if jax.device_count() != _DEVICES.value:
    raise UserError(
      f"this process already has {jax.device_count()} devices; run the planner "
      f"in a fresh process to plan for {_DEVICES.value}"
    )
  from absl import logging

  logging.set_verbosity(logging.ERROR)
  result = plan.plan(_CONFIG.value, _MEMORY.value, _USABLE.value, _CALIBRATION.value)
  print(plan.table(result))
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
