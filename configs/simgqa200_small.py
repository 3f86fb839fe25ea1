"""T5-small uptrained into SimGQA regrouped every 200 steps, G=4 on CNN/DailyMail (paper defaults otherwise).

    python -m wgqa_jax.train --config=configs/simgqa200_small.py --workdir=/tmp/simgqa200_small

Needs the HF checkpoint (t5-small) and TFDS cnn_dailymail (array_record). Paper (T5-small, short interval): R1 15.34.
"""
from wgqa_jax.train_config import paper_config


def get_config():
  c = paper_config("t5-small", "simgqa", kv_heads=4)
  c.regroup_every = 200
  return c
