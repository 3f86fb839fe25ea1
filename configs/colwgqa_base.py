"""T5-base uptrained into column-wise WGQA (a weight per head and d_kv dim), G=6 on CNN/DailyMail (paper defaults otherwise).

    python -m wgqa_jax.train --config=configs/colwgqa_base.py --workdir=/tmp/colwgqa_base

Needs the HF checkpoint (t5-base) and TFDS cnn_dailymail (array_record).
"""
from wgqa_jax.train_config import paper_config


def get_config():
  c = paper_config("t5-base", "colwgqa", kv_heads=6)
  return c
