"""python -m wgqa_jax.local_tfds: build a TFDS dataset shaped like cnn_dailymail, multi_news or
wmt14_translate/de-en with generated text, by the real TFDS builder (the library:
wgqa_jax.data.local_tfds).

    python -m wgqa_jax.local_tfds --dataset=cnn_dailymail --train=287113 --data_dir=/tmp/tfds
    python -m wgqa_jax.train --config=configs/tiny.py --config.data.dataset=cnn_dailymail \
        --config.data.data_dir=/tmp/tfds
"""

from __future__ import annotations

import os

from absl import flags

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.data.local_tfds import SHAPES, build

FLAGS = cli.flag_set()
flags.DEFINE_enum(
  "dataset", "cnn_dailymail", sorted(SHAPES), "the dataset whose shape to build", flag_values=FLAGS
)
flags.DEFINE_string("data_dir", None, "TFDS data_dir to build into", flag_values=FLAGS)
flags.DEFINE_integer("train", None, "train examples (default: the real count)", flag_values=FLAGS)
flags.DEFINE_integer(
  "eval", None, "validation and test examples (default: the real counts)", flag_values=FLAGS
)


def main(argv: list[str] | None = None) -> int:
  a = cli.parse(FLAGS, argv, "wgqa_jax.local_tfds")
  if not a.data_dir:
    raise UserError("pass --data_dir=DIR")
  for name in ("train", "eval"):
    if a[name].value is not None and a[name].value < 1:
      raise UserError(f"--{name}={a[name].value}: must be positive")
  sizes = dict(SHAPES[a.dataset][4])
  if a.train is not None:
    sizes["train"] = a.train
  if a.eval is not None:
    sizes["validation"] = sizes["test"] = a.eval
  print(build(a.dataset, os.path.expanduser(a.data_dir), sizes))
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
