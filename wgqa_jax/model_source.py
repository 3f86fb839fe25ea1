"""What a run's `model.init_from` names, resolved once at start-up: a random preset, our params
dir, or a Hugging Face checkpoint (local dir or hub id). Everything the run needs from it comes
from this one object: the model config, the weights (opened when asked: a hub id downloads its
config first, so every check runs before the weights are fetched), the generation settings best/
and final/ keep, and where the checkpoint's own tokenizer is.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from wgqa_jax import models, params_io
from wgqa_jax.decoding import settings as generation_settings_file

RANDOM = "tiny-random"  # model.init_from of a random init of preset model.arch
# the files a HF checkpoint's tokenizer is read from (wgqa_jax.tokenizers)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model")


@dataclasses.dataclass
class ModelSource:
  init_from: str               # as the config says
  cfg: Any                     # its model config, before the variant (random: the preset's);
                               # once the weights are open, the one they imply
  generation_settings: dict    # the checkpoint's, or the offline default for a random init
  tokenizer: str | None = None  # a local directory holding the checkpoint's tokenizer, if any
  reader: Any = None           # the weights, read tensor by tensor (wgqa_jax.streaming), once
                               # open_weights() has opened them

  @property
  def is_random(self) -> bool:
    return self.init_from == RANDOM

  def open_weights(self):
    """Open the checkpoint's weights (headers and shapes read and checked here, tensors later;
    a hub id downloads them now) and return the reader; None for a random init."""
    if self.reader is None and not self.is_random:
      if params_io.is_params_dir(self.init_from):
        self.reader = params_io.Reader(self.init_from)
      else:
        from wgqa_jax import hf
        self.reader = hf.Reader(self.init_from)
        # a hub id's full snapshot: its settings and tokenizer are read from there
        self.generation_settings = hf.generation_settings(self.reader.dir)
        self.tokenizer = _tokenizer_dir(self.reader.dir)
      # the weights have the last word: an HF T5 config.json can call untied heads tied
      self.cfg = self.reader.cfg
    return self.reader


def _tokenizer_dir(local: str) -> str | None:
  return local if any(os.path.exists(os.path.join(local, f)) for f in TOKENIZER_FILES) else None


def open_source(model) -> ModelSource:
  """The config's model section (init_from, arch) resolved: the config read (a hub id: its
  config.json alone), the weights not yet (ModelSource.open_weights)."""
  if model.init_from == RANDOM:
    return ModelSource(RANDOM, models.preset(model.arch), generation_settings_file.OFFLINE_DEFAULT)
  path = model.init_from
  if params_io.is_params_dir(path):
    return ModelSource(path, params_io.load_config_any(path), generation_settings_file.load(path))
  from wgqa_jax import hf
  local = hf.resolve_hf_dir(path, config_only=True)
  cfg_path = os.path.join(local, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{local} has no config.json: not a Hugging Face model directory")
  with open(cfg_path) as f:
    try:
      cfg = models.config_from_hf(json.load(f))
    except ValueError as e:
      raise ValueError(f"{cfg_path}: {e}") from None
  return ModelSource(path, cfg, hf.generation_settings(local), _tokenizer_dir(local))
