"""The full set of training config keys with defaults; configs/*.py start from `base_config()`.

The returned ConfigDict is locked: a misspelt `--config.key=value` fails with the known keys.
"""
from __future__ import annotations

import ml_collections

from wgqa_jax import convert, data
from wgqa_jax.config import PRESETS


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # ---- model ----
  c.init_from = "tiny-random"   # "tiny-random" | HF dir or hub id (t5-small) | wgqa params dir
  c.arch = "tiny"               # architecture preset for init_from=tiny-random
  # mha | mqa | gqa | wgqa | randwgqa | colwgqa | colrandwgqa | simgqa | asymgqa | kdgqa | dgqa
  # | pgqa (see README: attention variants)
  c.variant = "wgqa"
  c.kv_heads = 2                # G (ignored by mha / mqa)
  c.group_encoder = False       # paper: decoder self- and cross-attention only
  c.group_sizes = ""            # asymgqa: contiguous group sizes, e.g. "3,1,2,2"
  c.attention_noise = 0.1       # pgqa: std of the noise subtracted from attention logits
  c.regroup_every = 0           # SimGQA every N steps: regroup query heads by similarity (0: off)
  c.dtype = "float32"           # compute dtype: bfloat16 on GPUs
  c.dropout_rate = -1.0         # -1 keeps the checkpoint's value
  # ---- data ----
  c.dataset = "synthetic_summarize"
  c.data_dir = ""               # TFDS data_dir ("" = TFDS default)
  c.tokenizer = "bytes"         # "bytes" | "sentencepiece" (trained on the fly) | HF dir or id
  c.max_input_length = 512
  c.max_target_length = 256
  c.train_examples = -1         # -1 = the whole split
  # ---- optimisation ----
  c.batch_size = 32             # global batch
  c.grad_accum_steps = 1
  c.num_epochs = 3.0
  c.num_train_steps = -1        # > 0 overrides num_epochs
  c.learning_rate = 1e-3
  c.warmup_steps = 0
  c.weight_decay = 0.0
  c.max_grad_norm = 1.0         # 0 disables clipping
  c.label_smoothing = 0.0
  c.z_loss = 0.0
  c.seed = 0
  # ---- mesh ----
  c.mesh_data = -1              # -1: all devices not used by the model axis
  c.mesh_model = 1
  # ---- logging / eval / checkpoints ----
  c.log_every = 50
  c.eval_every = 500            # 0: only at the end
  c.eval_at_start = False       # also evaluate the converted model before any update
  c.eval_examples = 256
  c.eval_batch_size = 64
  c.eval_max_decode_length = -1  # -1 = max_target_length
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.best_metric = "rougeLsum"   # keep the best checkpoint by this eval metric too
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Fail early, with the key named, on values the run could only trip over later."""
  def bad(key, msg):
    raise ValueError(f"config.{key}={c[key]!r}: {msg}")
  if c.variant not in convert.VARIANTS:
    bad("variant", f"choose from {sorted(convert.VARIANTS)}")
  if c.init_from == "tiny-random" and c.arch not in PRESETS:
    bad("arch", f"choose from {sorted(PRESETS)}")
  if c.dataset not in list(data.TASKS) + list(data.SYNTHETIC):
    bad("dataset", f"choose from {sorted(data.TASKS) + list(data.SYNTHETIC)}")
  for key in ("batch_size", "grad_accum_steps", "max_input_length", "max_target_length",
              "log_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints"):
    if c[key] <= 0:
      bad(key, "must be positive")
  if c.batch_size % c.grad_accum_steps:
    bad("batch_size", f"must be divisible by grad_accum_steps={c.grad_accum_steps}")
  if c.learning_rate <= 0:
    bad("learning_rate", "must be positive")
  if c.num_train_steps <= 0 and c.num_epochs <= 0:
    bad("num_epochs", "set num_epochs > 0 or num_train_steps > 0")
  if c.group_sizes and c.variant != "asymgqa":
    bad("group_sizes", "only applies to variant=asymgqa")
  if c.regroup_every < 0:
    bad("regroup_every", "must be >= 0")
  if c.dtype not in ("float32", "bfloat16"):
    bad("dtype", "float32 or bfloat16")


def paper_config(checkpoint: str, variant: str, kv_heads: int) -> ml_collections.ConfigDict:
  """The WGQA paper's setup: a pretrained T5 uptrained on CNN/DailyMail ("summarize: "), AdamW
  lr 1e-3 with linear decay, batch 32, 3 epochs, inputs 512 / targets 256."""
  c = base_config()
  c.init_from = checkpoint
  c.tokenizer = checkpoint
  c.variant = variant
  c.kv_heads = kv_heads
  c.dataset = "cnn_dailymail"
  c.dtype = "bfloat16"
  return c
