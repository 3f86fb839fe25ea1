"""python -m wgqa_jax.sweep: uptrain several variants from one MHA checkpoint with the same
budget and write the paper's table (the library: wgqa_jax.lab.sweep).

    python -m wgqa_jax.sweep --config=configs/tiny.py --out=workdirs/sweep
    python -m wgqa_jax.sweep --config=configs/paper.py:mha,small --pretrain_steps=0 \
        --variants=mha,mqa,gqa,wgqa,randwgqa --out=/tmp/sweep_small   # init_from: a trained MHA

--config and --config.SECTION.KEY=VALUE overrides work as in wgqa_jax.train and apply to every
run. Re-running resumes finished and partial runs.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.lab import sweep

FLAGS = cli.flag_set()
_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/tiny.py", "training config file", lock_config=True, flag_values=FLAGS
)
flags.DEFINE_list("variants", sweep.DEFAULT_VARIANTS, "variants to uptrain", flag_values=FLAGS)
flags.DEFINE_string("out", None, "sweep directory", flag_values=FLAGS)
flags.DEFINE_integer(
  "pretrain_steps",
  1000,
  "train a random MHA this long first (0: use config.model.init_from)",
  flag_values=FLAGS,
)
flags.DEFINE_integer("steps", 120, "uptraining steps per variant", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
  args = cli.parse(FLAGS, argv, "wgqa_jax.sweep")
  if not args.out:
    raise UserError("pass --out=DIR")
  variants = [v.strip() for v in args.variants if v.strip()]
  command = " ".join(argv if argv is not None else sys.argv[1:])
  lines = sweep.run(_CONFIG.value, variants, args.out, args.pretrain_steps, args.steps, command)
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
