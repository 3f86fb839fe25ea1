"""T5-small uptrained into WGQA (weights init 0.5), G=4 on CNN/DailyMail (WGQA paper defaults).

    python -m wgqa_jax.train --config=configs/wgqa_small.py --workdir=/tmp/wgqa_small

The same run as configs/paper.py:wgqa,small, kept under this name as the quick-start command;
every other paper run is configs/paper.py:VARIANT,SIZE. Needs the HF checkpoint (t5-small) and
TFDS cnn_dailymail (array_record). Paper, T5-small after 3 epochs: MHA R1 41.12, MQA 38.79,
GQA 40.31, WGQA 40.38, RandWGQA 39.64.
"""
from wgqa_jax.train_config import paper_config


def get_config():
  return paper_config("t5-small", "wgqa", kv_heads=4)
