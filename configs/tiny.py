"""Offline default: uptrain a tiny random T5 into WGQA (G=2) on the built-in synthetic task.

    python -m wgqa_jax.train --config=configs/tiny.py --workdir=/tmp/wgqa_tiny

No download: generated data, a sentencepiece vocabulary trained on it in ~1 s. About 2 minutes on 2
CPU cores; ROUGE rises from ~0 as the model learns to extract the lead sentence. The settings are in
wgqa_jax/training/config.py:tiny_config(); override any with --config.SECTION.KEY=VALUE.
"""

from wgqa_jax.training.config import tiny_config


def get_config():
  return tiny_config("synthetic_summarize")
