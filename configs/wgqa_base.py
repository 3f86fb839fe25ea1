"""T5-base uptrained into WGQA (weights init 0.5), G=6 on CNN/DailyMail (WGQA paper defaults).

    python -m wgqa_jax.train --config=configs/wgqa_base.py --workdir=/tmp/wgqa_base

Needs the HF checkpoint (t5-base) and TFDS cnn_dailymail (array_record). Paper, T5-small after 3 epochs:
MHA R1 41.12, MQA 38.79, GQA 40.31, WGQA 40.38, RandWGQA 39.64.
"""
from wgqa_jax.train_config import paper_config


def get_config():
  return paper_config("t5-base", "wgqa", kv_heads=6)
