"""Offline default: uptrain a tiny random T5 into WGQA (G=2) on the built-in synthetic task.

    python -m wgqa_jax.train --config=configs/tiny.py --workdir=/tmp/wgqa_tiny

No download: byte tokenizer, generated data. ~2-3 min on 2 CPU cores; ROUGE-Lsum rises from
~0 to well above 50 as the model learns to copy the lead sentence.
"""
from wgqa_jax.train_config import base_config


def get_config():
  c = base_config()
  c.init_from = "tiny-random"
  c.arch = "tiny"
  c.variant = "wgqa"
  c.kv_heads = 2
  c.max_input_length = 192
  c.max_target_length = 48
  c.batch_size = 32
  c.num_epochs = 0
  c.num_train_steps = 600
  c.learning_rate = 3e-3
  c.warmup_steps = 50
  c.log_every = 25
  c.eval_every = 200
  c.eval_examples = 64
  c.checkpoint_every = 200
  return c
