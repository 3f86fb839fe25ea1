"""T5-small uptrained into column-wise WGQA (a weight per head and d_kv dim), G=4 on CNN/DailyMail (paper defaults otherwise).

    python -m wgqa_jax.train --config=configs/colwgqa_small.py --workdir=/tmp/colwgqa_small

Needs the HF checkpoint (t5-small) and TFDS cnn_dailymail (array_record).
"""
from wgqa_jax.train_config import paper_config


def get_config():
  c = paper_config("t5-small", "colwgqa", kv_heads=4)
  return c
