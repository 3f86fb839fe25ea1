"""Offline translation: uptrain a tiny random T5 into WGQA (G=2) on the built-in synthetic
German->English task (a fixed pseudo-word dictionary plus one reordering), scored with BLEU.

    python -m wgqa_jax.train --config=configs/tiny_translate.py --workdir=/tmp/wgqa_tiny_translate

No download. Harder than configs/tiny.py: the model must learn a 150-word dictionary and move
the last word to second place.
"""

from wgqa_jax.training.config import tiny_config


def get_config():
  c = tiny_config("synthetic_translate")
  c.data.max_input_length = 48
  c.data.max_target_length = 32
  c.optim.num_train_steps = 2000
  return c
