"""T5-small uptrained into DGQA (queries allocated by K-kernel norms as they evolve), G=4 on CNN/DailyMail (paper defaults otherwise).

    python -m wgqa_jax.train --config=configs/dgqa_small.py --workdir=/tmp/dgqa_small

Needs the HF checkpoint (t5-small) and TFDS cnn_dailymail (array_record).
"""
from wgqa_jax.train_config import paper_config


def get_config():
  c = paper_config("t5-small", "dgqa", kv_heads=4)
  return c
