"""The tokenizer a checkpoint was trained with, for the tools that decode it (evaluate) or
write it for others (convert's exports): the one asked for, else its run's (a params dir in a
training workdir: data.tokenizer of its config.json, a sentencepiece vocabulary from the
workdir, with the sentinels its run gave it), else the checkpoint's own files (a HF directory).
Never a silent default."""

from __future__ import annotations

import os

import ml_collections

from wgqa_jax.core import cli
from wgqa_jax.core.errors import MissingInput, UserError
from wgqa_jax.data import tokenizers
from wgqa_jax.store.resolve import ModelSource
from wgqa_jax.training import data_setup
from wgqa_jax.training.config import base_config


def open_tokenizer(
  source: ModelSource, cfg, name: str | None = None, required: bool = True, fit: bool = True
):
  """The tokenizer of `source` (whose model config is `cfg`); None when it has none and it is
  not `required` (a one-line refusal when it is). `fit`: refuse one whose ids the model cannot
  take (more ids than embeddings, another EOS): decoding needs that, an export does not."""
  run = source.run_config
  # the run's data settings (its config.json keeps what it set; the rest are the defaults)
  data = ml_collections.ConfigDict({**base_config().data.to_dict(), **run.get("data", {})})
  if name is None:
    name = data.tokenizer if run else source.tokenizer
    if name is None:
      if not required:
        return None
      raise UserError(
        f"{source.name} has no run config and no tokenizer files: pass --tokenizer (the one "
        f"it was trained with)"
      )
  path = source.path
  workdir = os.path.dirname(os.path.abspath(path)) if run else path  # where spm.model is
  try:
    tok = tokenizers.get_tokenizer(
      name, workdir, extra_ids=data_setup.extra_ids(data) if run else 0
    )
  except OSError as e:  # a HF tokenizer that is neither here nor reachable
    raise MissingInput(f"tokenizer {name!r} cannot be read: {cli.first_line(e, 200)}") from None
  if fit and (tok.vocab_size > cfg.vocab_size or tok.eos_id != cfg.eos_token_id):
    raise UserError(
      f"tokenizer {name!r} ({tok.vocab_size} ids, EOS {tok.eos_id}) does not fit "
      f"{source.name} ({cfg.vocab_size} embeddings, EOS {cfg.eos_token_id}): pass the "
      f"tokenizer it was trained with"
    )
  return tok
