"""What a run's `model.init_from` names, resolved once at start-up: a random preset, our params
dir, or a Hugging Face checkpoint (local dir or hub id, downloaded once). Everything the run needs
from it comes from this one object: the model config, the opened weights, the generation settings
best/ and final/ keep, and where the checkpoint's own tokenizer is.
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


@dataclasses.dataclass(frozen=True)
class ModelSource:
  init_from: str              # as the config says
  cfg: Any                    # its model config, before the variant (random: the preset's)
  generation_settings: dict   # the checkpoint's, or the offline default for a random init
  reader: Any = None          # the weights, read tensor by tensor (wgqa_jax.streaming); None for
                              # a random init or a source opened without weights
  tokenizer: str | None = None  # a local directory holding the checkpoint's tokenizer, if any

  @property
  def is_random(self) -> bool:
    return self.init_from == RANDOM

  def describe(self, arch: str) -> str:
    return f"a random {arch}" if self.is_random else self.init_from


def open_source(model, weights: bool = True) -> ModelSource:
  """The config's model section (init_from, arch) resolved and opened: headers and shapes are
  read and checked here, weights later, so a damaged or missing checkpoint fails before a
  workdir is written. weights=False: the config alone (the planner: a hub id downloads only its
  config.json)."""
  if model.init_from == RANDOM:
    return ModelSource(RANDOM, models.preset(model.arch), generation_settings_file.OFFLINE_DEFAULT)
  path = model.init_from
  if params_io.is_params_dir(path):
    reader = params_io.Reader(path) if weights else None
    cfg = reader.cfg if reader else params_io.load_config_any(path)
    return ModelSource(path, cfg, generation_settings_file.load(path), reader)
  from wgqa_jax import hf
  if weights:
    reader = hf.Reader(path)
    local, cfg = reader.dir, reader.cfg
  else:
    reader, local = None, hf.resolve_hf_dir(path, config_only=True)
    with open(os.path.join(local, "config.json")) as f:
      cfg = models.config_from_hf(json.load(f))
  has_tokenizer = any(os.path.exists(os.path.join(local, f)) for f in TOKENIZER_FILES)
  return ModelSource(path, cfg, hf.generation_settings(local), reader,
                     local if has_tokenizer else None)
