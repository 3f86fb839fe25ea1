"""T5-small uptrained into SimGQA (heads regrouped by query similarity once, before uptraining), G=4 on CNN/DailyMail (paper defaults otherwise).

    python -m wgqa_jax.train --config=configs/simgqa_small.py --workdir=/tmp/simgqa_small

Needs the HF checkpoint (t5-small) and TFDS cnn_dailymail (array_record). Paper (T5-small): R1 38.87.
"""
from wgqa_jax.train_config import paper_config


def get_config():
  c = paper_config("t5-small", "simgqa", kv_heads=4)
  return c
