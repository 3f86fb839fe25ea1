"""The tokenizer a checkpoint was trained with, for the tools that decode it (evaluate) or
write it for others (convert's exports): the one asked for, else its run's (a params dir in a
training workdir: data.tokenizer of its config.json, a sentencepiece vocabulary from the
workdir), else the checkpoint's own files (a HF directory). Never a silent default."""

from __future__ import annotations

import os

from wgqa_jax.core.errors import UserError
from wgqa_jax.data import tokenizers
from wgqa_jax.store.resolve import ModelSource
from wgqa_jax.training.config import base_config


def open_tokenizer(source: ModelSource, cfg, name: str | None = None, required: bool = True):
  """The tokenizer of `source` (whose model config is `cfg`), checked to fit it; None when it
  has none and it is not `required` (a one-line refusal when it is)."""
  run = source.run_config
  if name is None:
    # the run's (its config.json keeps what it set; the rest are the defaults), else its own
    name = (
      {**base_config().data.to_dict(), **run.get("data", {})}["tokenizer"]
      if run
      else (source.tokenizer)
    )
    if name is None:
      if not required:
        return None
      raise UserError(
        f"{source.name} has no run config and no tokenizer files: pass --tokenizer (the one "
        f"it was trained with)"
      )
  path = source.path
  workdir = os.path.dirname(os.path.abspath(path)) if run else path  # where spm.model is
  tok = tokenizers.get_tokenizer(name, workdir)
  if tok.vocab_size > cfg.vocab_size or tok.eos_id != cfg.eos_token_id:
    raise UserError(
      f"tokenizer {name!r} ({tok.vocab_size} ids, EOS {tok.eos_id}) does not fit "
      f"{source.name} ({cfg.vocab_size} embeddings, EOS {cfg.eos_token_id}): pass the "
      f"tokenizer it was trained with"
    )
  return tok
