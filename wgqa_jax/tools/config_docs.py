"""python -m wgqa_jax.train_config > docs/CONFIG.md: the training config's keys, defaults and
meanings as Markdown tables, generated from wgqa_jax/training/config.py (the source is the
documentation)."""

from __future__ import annotations

from wgqa_jax.core import cli
from wgqa_jax.training.config import config_docs

FLAGS = cli.flag_set()


def main(argv: list[str] | None = None) -> int:
  cli.parse(FLAGS, argv, "wgqa_jax.train_config")
  print(config_docs(), end="")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
