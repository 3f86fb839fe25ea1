"""T5-base uptrained into PGQA (noise subtracted from grouped attention logits), G=6 on CNN/DailyMail (paper defaults otherwise).

    python -m wgqa_jax.train --config=configs/pgqa_base.py --workdir=/tmp/pgqa_base

Needs the HF checkpoint (t5-base) and TFDS cnn_dailymail (array_record).
"""
from wgqa_jax.train_config import paper_config


def get_config():
  c = paper_config("t5-base", "pgqa", kv_heads=6)
  return c
