"""Offline default: uptrain a tiny random T5 into WGQA (G=2) on the built-in synthetic task.

    python -m wgqa_jax.train --config=configs/tiny.py --workdir=/tmp/wgqa_tiny

No download: generated data, a sentencepiece vocabulary trained on it in ~1 s. About 2 minutes on
2 CPU cores; ROUGE rises from ~0 as the model learns to extract the lead sentence.
"""
from wgqa_jax.train_config import base_config


def get_config():
  c = base_config()
  c.init_from = "tiny-random"
  c.arch = "tiny"
  c.variant = "wgqa"
  c.kv_heads = 2
  c.tokenizer = "sentencepiece"
  c.max_input_length = 64
  c.max_target_length = 16
  c.batch_size = 32
  c.num_epochs = 0
  c.num_train_steps = 1500
  c.learning_rate = 3e-3
  c.warmup_steps = 50
  c.log_every = 25
  c.eval_every = 500
  c.eval_examples = 64
  c.checkpoint_every = 500
  return c
