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
  c.dataset = "synthetic_summarize"  # | synthetic_translate (offline) | cnn_dailymail | multi_news | wmt14_de_en (TFDS)
  c.data_dir = ""               # TFDS data_dir ("" = TFDS default)
  c.tokenizer = "bytes"         # "bytes" | "sentencepiece" (trained on the fly) | HF dir or id
  c.max_input_length = 512     # tokens, truncated (EOS kept) and padded
  c.max_target_length = 256    # tokens; also the eval decode length by default
  c.train_examples = -1         # -1 = the whole split
  # ---- optimisation ----
  c.batch_size = 32             # global batch
  c.grad_accum_steps = 1       # micro-batches per step (same result as the full batch)
  c.num_epochs = 3.0           # paper: 3
  c.num_train_steps = -1        # > 0 overrides num_epochs
  c.learning_rate = 1e-3       # AdamW peak, linear decay to 0 (paper: 1e-3)
  c.warmup_steps = 0           # linear warmup before the decay
  c.weight_decay = 0.0         # AdamW decoupled weight decay
  c.max_grad_norm = 1.0         # 0 disables clipping
  c.label_smoothing = 0.0      # of the cross-entropy targets
  c.z_loss = 0.0               # coefficient of log(Z)^2 (PaLM-style stabiliser)
  c.seed = 0                   # data order, dropout, RandWGQA init, tiny-random init
  # ---- mesh ----
  c.mesh_data = -1              # -1: all devices not used by the model axis
  c.mesh_model = 1              # tensor-parallel ways (heads, MLP, vocab split)
  # ---- logging / eval / checkpoints ----
  c.log_every = 50             # steps between train metrics (JSONL + TensorBoard)
  c.eval_every = 500            # 0: only at the end
  c.eval_at_start = False       # also evaluate the converted model before any update
  c.eval_examples = 256        # validation examples decoded for ROUGE / BLEU
  c.eval_batch_size = 64       # batch of the eval loss and cached greedy decoding
  c.eval_max_decode_length = -1  # -1 = max_target_length
  c.checkpoint_every = 500     # steps between orbax checkpoints (async)
  c.keep_checkpoints = 3       # latest checkpoints kept
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


def tiny_config(dataset: str = "synthetic_summarize") -> ml_collections.ConfigDict:
  """The offline setup (configs/tiny*.py): a tiny random T5 uptrained into WGQA (G=2) on a
  generated task, with a sentencepiece vocabulary trained on the fly. Minutes on 2 CPU cores."""
  c = base_config()
  c.init_from = "tiny-random"
  c.arch = "tiny"
  c.variant = "wgqa"
  c.kv_heads = 2
  c.dataset = dataset
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


def config_docs() -> str:
  """Markdown table of every training config key: default and the comment beside it in
  base_config() (the source is the documentation)."""
  import inspect
  import re
  lines = inspect.getsource(base_config).splitlines()
  doc, section, pending = {}, {}, []
  current = ""
  for line in lines:
    m = re.match(r"\s*# ---- (.+) ----", line)
    if m:
      current = m.group(1)
      continue
    m = re.match(r"\s*c\.(\w+) = (.+?)(?:\s+#\s*(.*))?$", line)
    if m:
      doc[m.group(1)] = " ".join(pending + ([m.group(3)] if m.group(3) else []))
      section[m.group(1)] = current
      pending = []
    elif line.strip().startswith("#"):
      pending.append(line.strip()[1:].strip())
  c = base_config()
  out = ["# Training config keys", "",
         "Generated by `python -m wgqa_jax.train_config > docs/CONFIG.md` from "
         "`wgqa_jax/train_config.py`. Override any key with `--config.KEY=VALUE`; unknown keys "
         "are errors.", ""]
  last = None
  for key in doc:
    if section[key] != last:
      last = section[key]
      out += ["", f"## {last}", "", "| key | default | meaning |", "|---|---|---|"]
    out.append(f"| `{key}` | `{c[key]!r}` | {doc[key].replace('|', '/')} |")
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  print(config_docs(), end="")
