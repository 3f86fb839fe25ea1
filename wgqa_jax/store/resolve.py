"""What a path or name a user gives for a model means: the one resolver. `model.init_from`,
evaluate's --checkpoint, convert's --hf / --params, pareto's points and the planner all ask it.

    source = resolve(name, arch="tiny")   # the config read; weights opened when asked
    source.cfg, source.generation_settings, source.tokenizer, source.run_config
    reader = source.open_weights()        # tensor by tensor (wgqa_jax.store.streaming)
    params, cfg = source.load()           # whole, in host memory

A name is, in this order:
  "tiny-random"       a random init of architecture preset `arch`
  our params dir      wgqa_config.json + params.safetensors (wgqa_jax.store.params_io)
  a training workdir  its best/ params, else final/ (and its config.json as `run_config`)
  a HF directory      config.json + weights (wgqa_jax.store.hf), or a hub id to download
A hub id downloads config.json first, so every check runs before the weights are fetched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from wgqa_jax.core import workdir
from wgqa_jax.core.errors import MissingInput, UserError
from wgqa_jax.models import config_from_hf, preset
from wgqa_jax.store import generation_file, hf, params_io

RANDOM = "tiny-random"  # model.init_from of a random init of preset model.arch
# the files a HF checkpoint's tokenizer is read from (wgqa_jax.data.tokenizers)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model")


@dataclasses.dataclass
class ModelSource:
  name: str  # as the user gave it
  kind: str  # "random" | "params" | "hf"
  path: str | None  # the params dir or HF dir it names (random: None)
  cfg: Any  # its model config (random: the preset's); once the weights are
  # open, the one they imply
  generation_settings: dict  # the checkpoint's, or the offline default for a random init
  tokenizer: str | None = None  # a local directory holding the checkpoint's tokenizer, if any
  run_config: dict = dataclasses.field(default_factory=dict)  # the workdir's training config
  reader: Any = None  # the weights, read tensor by tensor, once open_weights() ran

  @property
  def is_random(self) -> bool:
    return self.kind == "random"

  def open_weights(self):
    """Open the weights (headers and shapes read and checked here, tensors later; a hub id
    downloads them now) and return the reader: `cfg` and `read(path)`. None for a random init
    (training.model_setup makes it, with the run's tokenizer and seed)."""
    if self.reader is not None or self.is_random:
      return self.reader
    if self.kind == "params":
      self.reader = params_io.Reader(self.path)
    else:
      self.reader = hf.Reader(self.path)
      # a hub id's full snapshot: its settings and tokenizer are read from there
      self.path = self.reader.dir
      self.generation_settings = hf.generation_settings(self.reader.dir)
      self.tokenizer = _tokenizer_dir(self.reader.dir)
    # the weights have the last word: an HF T5 config.json can call untied heads tied
    self.cfg = self.reader.cfg
    return self.reader

  def load(self):
    """(params, cfg) of a checkpoint, whole in host memory, verified as they are read."""
    from flax import traverse_util

    if self.is_random:
      raise ValueError("a random init has no weights to load")
    reader = self.open_weights()
    if self.kind == "hf":
      return hf.hf_to_params(reader, reader.cfg), reader.cfg
    return traverse_util.unflatten_dict({p: reader.read(p) for p in reader.paths()}), reader.cfg


def _tokenizer_dir(local: str) -> str | None:
  return local if any(os.path.exists(os.path.join(local, f)) for f in TOKENIZER_FILES) else None


def _run_config(directory: str) -> dict:
  """The training config of a workdir ({} if there is none)."""
  path = os.path.join(directory, workdir.RUN_CONFIG)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError:
    raise UserError(f"{path} is not a training config (torn or not JSON)") from None


def resolve(name: str, arch: str | None = None) -> ModelSource:
  """What `name` names (see the module docstring), its config read, its weights not yet."""
  if name == RANDOM:
    if arch is None:
      raise UserError(f"{RANDOM} needs an architecture preset (model.arch)")
    return ModelSource(name, "random", None, preset(arch), generation_file.OFFLINE_DEFAULT)
  if params_io.is_params_dir(name):
    parent = os.path.dirname(os.path.abspath(name))
    return ModelSource(
      name,
      "params",
      name,
      params_io.load_config(name),
      generation_file.load(name),
      run_config=_run_config(parent) if workdir.is_workdir(parent) else {},
    )
  if os.path.isdir(name) and workdir.is_workdir(name):
    for sub in (workdir.BEST, workdir.FINAL):
      path = os.path.join(name, sub)
      if params_io.is_params_dir(path):
        return dataclasses.replace(resolve(path), name=name, run_config=_run_config(name))
    raise MissingInput(
      f"{name} is a training workdir with no {workdir.BEST}/ or "
      f"{workdir.FINAL}/ yet: use one of its params dirs once the run has "
      f"written it"
    )
  local = hf.resolve_hf_dir(name, config_only=True)
  cfg_path = os.path.join(local, "config.json")
  if not os.path.exists(cfg_path):
    raise MissingInput(
      f"{name} is neither a training workdir (best/ or final/), a wgqa_jax "
      f"params dir nor a HF T5 / Llama directory (it has no config.json)"
    )
  cfg = config_from_hf(hf.read_config(cfg_path))
  return ModelSource(name, "hf", local, cfg, hf.generation_settings(local), _tokenizer_dir(local))
