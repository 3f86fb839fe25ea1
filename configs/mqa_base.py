"""T5-base uptrained into MQA (1 KV head) on CNN/DailyMail (WGQA paper defaults).

    python -m wgqa_jax.train --config=configs/mqa_base.py --workdir=/tmp/mqa_base

Needs the HF checkpoint (t5-base) and TFDS cnn_dailymail (array_record). Paper, T5-small after 3 epochs:
MHA R1 41.12, MQA 38.79, GQA 40.31, WGQA 40.38, RandWGQA 39.64.
"""
from wgqa_jax.train_config import base_config


def get_config():
  c = base_config()
  c.init_from = "t5-base"
  c.tokenizer = "t5-base"
  c.variant = "mqa"
  c.kv_heads = 6
  c.dataset = "cnn_dailymail"
  c.dtype = "bfloat16"
  return c
