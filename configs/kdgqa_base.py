"""T5-base uptrained into KDGQA (queries allocated by key norms each forward pass), G=6 on CNN/DailyMail (paper defaults otherwise).

    python -m wgqa_jax.train --config=configs/kdgqa_base.py --workdir=/tmp/kdgqa_base

Needs the HF checkpoint (t5-base) and TFDS cnn_dailymail (array_record).
"""
from wgqa_jax.train_config import paper_config


def get_config():
  c = paper_config("t5-base", "kdgqa", kv_heads=6)
  return c
