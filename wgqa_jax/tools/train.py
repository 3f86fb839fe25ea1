"""python -m wgqa_jax.train: uptrain a T5 or Llama-architecture checkpoint into MHA / MQA / GQA
/ WGQA / ... (the library: wgqa_jax.training.trainer).

    python -m wgqa_jax.train --config=configs/tiny.py --workdir=/tmp/wgqa_tiny
    python -m wgqa_jax.train --config=configs/llama_tiny.py --workdir=/tmp/wgqa_llama_tiny
    python -m wgqa_jax.train --config=configs/paper.py:wgqa,small --config.optim.batch_size=64 \
        --workdir=/tmp/wgqa_small

Re-running the same command with the same workdir resumes. Exit codes: 0 done, 2 bad input,
3 diverged, 74 disk full, 75 preempted (saved; rerun to resume).
"""

from __future__ import annotations

import os

from absl import flags, logging
from ml_collections import config_flags

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.training import trainer

FLAGS = cli.flag_set()
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "training config file", lock_config=True, flag_values=FLAGS
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "where checkpoints and metrics go (default: workdirs/<config name>)",
  flag_values=FLAGS,
)


def initialize_distributed() -> None:
  """Join a multi-host run when the environment describes one (launch/multihost.sh sets the
  JAX_* variables; SLURM is auto-detected); a single-host run does nothing."""
  import jax

  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
      coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
  elif os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()


def main(argv: list[str] | None = None) -> int:
  cli.parse(FLAGS, argv, "wgqa_jax.train")
  if _CONFIG.value is None:
    raise UserError("pass --config=configs/NAME.py")
  config_file = FLAGS["config"].config_filename.split(":")[0]
  workdir = _WORKDIR.value or os.path.join(
    "workdirs", os.path.splitext(os.path.basename(config_file))[0]
  )
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO; our progress is printed
  cli.quiet_disk_full_logs()  # a full disk is reported once, as DiskFull
  initialize_distributed()
  trainer.train(_CONFIG.value, workdir)
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
