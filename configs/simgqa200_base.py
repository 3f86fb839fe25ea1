"""T5-base uptrained into SimGQA regrouped every 200 steps, G=6 on CNN/DailyMail (paper defaults otherwise).

    python -m wgqa_jax.train --config=configs/simgqa200_base.py --workdir=/tmp/simgqa200_base

Needs the HF checkpoint (t5-base) and TFDS cnn_dailymail (array_record).
"""
from wgqa_jax.train_config import paper_config


def get_config():
  c = paper_config("t5-base", "simgqa", kv_heads=6)
  c.regroup_every = 200
  return c
