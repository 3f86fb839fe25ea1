"""T5-small uptrained into GQA, G=4 on CNN/DailyMail (WGQA paper defaults).

    python -m wgqa_jax.train --config=configs/gqa_small.py --workdir=/tmp/gqa_small

Needs the HF checkpoint (t5-small) and TFDS cnn_dailymail (array_record). Paper, T5-small after 3 epochs:
MHA R1 41.12, MQA 38.79, GQA 40.31, WGQA 40.38, RandWGQA 39.64.
"""
from wgqa_jax.train_config import base_config


def get_config():
  c = base_config()
  c.init_from = "t5-small"
  c.tokenizer = "t5-small"
  c.variant = "gqa"
  c.kv_heads = 4
  c.dataset = "cnn_dailymail"
  c.dtype = "bfloat16"
  return c
