"""The WGQA paper's runs: a pretrained T5 uptrained on CNN/DailyMail, one variant per run.

    python -m wgqa_jax.train --config=configs/paper.py:wgqa,small --workdir=/tmp/wgqa_small
    python -m wgqa_jax.train --config=configs/paper.py:simgqa200,base --workdir=/tmp/simgqa200_base

ARG is VARIANT,SIZE: VARIANT any of wgqa_jax.grouping.variants (mha, mqa, gqa, wgqa, randwgqa,
colwgqa, simgqa, kdgqa, dgqa, pgqa, ...) or simgqaN (SimGQA regrouping every N steps); SIZE small
(t5-small, G=4) or base (t5-base, G=6). Needs the HF checkpoint and TFDS cnn_dailymail
(array_record). Paper, T5-small after 3 epochs: MHA R1 41.12, MQA 38.79, GQA 40.31, WGQA 40.38,
RandWGQA 39.64. Hyperparameters: wgqa_jax/training/config.py:paper_config (AdamW lr 1e-3, linear
decay, batch 32, 3 epochs, inputs 512 / targets 256, bf16).
"""

import re

from wgqa_jax.training.config import paper_config

SIZES = {"small": ("t5-small", 4), "base": ("t5-base", 6)}


def get_config(arg: str = "wgqa,small"):
  variant, _, size = arg.partition(",")
  if size not in SIZES:
    raise ValueError(f"configs/paper.py:{arg}: SIZE must be one of {sorted(SIZES)}")
  m = re.fullmatch(r"simgqa(\d+)", variant)
  checkpoint, kv_heads = SIZES[size]
  c = paper_config(checkpoint, "simgqa" if m else variant, kv_heads)
  if m:
    c.grouping.regroup_every = int(m.group(1))
  return c
