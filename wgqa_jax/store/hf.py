"""Hugging Face checkpoints <-> our params, through each family's declarative key table
(models/<family>/hf_table.py), used both ways.

    params, cfg = hf.from_hf("t5-small")          # local dir or hub id; the family's config
    hf.save_hf(params, cfg, out_dir)              # transformers-loadable
    reader = hf.Reader(llama_dir)                 # one tensor at a time (wgqa_jax.store.streaming)

The family comes from config.json's model_type (models.family.config_from_hf). What HF can hold
is the family's to say (`hf_holds`, `exportable`): HF T5 has MHA heads only, so T5 exports
expand KV heads back to H; Llama's num_key_value_heads holds G, so Llama exports keep G heads.

A table row (models.family.HFRow) is (our param path, HF key, layout, aliases). The layout says
how a PyTorch [out, in] tensor becomes our kernel and back, so reading and writing cannot drift
apart:
  same      identical arrays (embeddings, norms, relative-position tables)
  T         transposed (MLP, lm_head)
  heads_in  [H*dk, d] -> (d, H, dk)   (q, k, v)
  heads_out [d, H*dk] -> (H, dk, d)   (o)
safetensors are read without torch; pytorch_model.bin (and sharded index files) need torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from wgqa_jax.core import cli
from wgqa_jax.core.errors import MissingDependency, MissingInput, UserError
from wgqa_jax.models import family_of
from wgqa_jax.models.family import HFRow as Row, config_from_hf
from wgqa_jax.store import generation_file
from wgqa_jax.store.tensor_files import SafetensorsFile

log = logging.getLogger(__name__)


def table(cfg):
  return family_of(cfg).hf_table(cfg)


# ----------------------------------------------------------------------------------------------
# Layouts, both ways
# ----------------------------------------------------------------------------------------------
def _hf_shape(layout: str, ours: tuple[int, ...]) -> tuple[int, ...]:
  if layout == "same":
    return ours
  if layout == "T":
    return ours[::-1]
  if layout == "heads_in":  # ours (d, H, dk)
    return (ours[1] * ours[2], ours[0])
  if layout == "heads_out":  # ours (H, dk, d)
    return (ours[2], ours[0] * ours[1])
  raise AssertionError(f"unknown layout {layout!r}")


def _to_ours(layout: str, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
  # T, heads_in ([H*dk, d] -> (d, H*dk)) and heads_out ([d, H*dk] -> (H*dk, d)) all transpose,
  # then split the head axis.
  return x if layout == "same" else x.T.reshape(ours)


def _to_hf(layout: str, x: np.ndarray) -> np.ndarray:
  if layout == "same":
    return x
  if layout == "T":
    return x.T
  if layout == "heads_in":  # (d, H, dk) -> [H*dk, d]
    return x.reshape(x.shape[0], -1).T
  return x.reshape(-1, x.shape[-1]).T  # heads_out: (H, dk, d) -> [d, H*dk]


# ----------------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------------
def _shapes(cfg) -> dict[tuple[str, ...], tuple[int, ...]]:
  return {
    k: tuple(v.shape)
    for k, v in traverse_util.flatten_dict(family_of(cfg).param_shapes(cfg)).items()
  }


def _key_of(row: Row, sd: Mapping[str, Any]) -> str | None:
  """The state-dict key holding row's tensor (its own key or an alias), None if absent."""
  return next((k for k in (row.key, *row.aliases) if k in sd), None)


def _read_row(row: Row, sd: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
  """One param in our layout (float32) from its HF tensor."""
  key = _key_of(row, sd)
  if key is None:
    raise UserError(
      f"checkpoint is missing {row.key!r}"
      + (f" (also tried {list(row.aliases)})" if row.aliases else "")
      + f"; it has {len(sd)} tensors, e.g. {sorted(sd)[:3]}"
    )
  value = sd[key]
  want = _hf_shape(row.layout, shape)
  if tuple(np.shape(value)) != want:
    raise UserError(
      f"checkpoint tensor {key!r} has shape {tuple(np.shape(value))}, but the "
      f"config implies {want}: config and weights disagree"
    )
  return np.ascontiguousarray(_to_ours(row.layout, np.asarray(value, np.float32), shape))


def hf_to_params(sd: Mapping[str, Any], cfg) -> dict:
  """HF state dict (numpy/torch tensors, PyTorch [out, in] layout; or a Reader) -> our params:
  MHA for T5, the checkpoint's own G KV heads for Llama."""
  if not family_of(cfg).hf_holds(cfg):
    raise ValueError(
      "hf_to_params builds the params HF holds; pass the HF config, then call variants.from_mha()"
    )
  shapes = _shapes(cfg)
  flat = {row.path: _read_row(row, sd, shapes[row.path]) for row in table(cfg)}
  ignored = sorted(
    k
    for k in set(sd) - {_key_of(row, sd) for row in table(cfg)}
    if not k.endswith(("embed_tokens.weight", "lm_head.weight"))
  )
  if ignored:
    log.warning(
      "ignoring %d checkpoint tensors the model does not use: %s", len(ignored), ignored[:5]
    )
  return traverse_util.unflatten_dict(flat)


def exportable(params, cfg, form: str = "hf"):
  """(params, cfg) in the grouping HF form `form` holds (the family's `exportable`: T5 expanded
  to MHA heads; Llama with WGQA weights folded, its G heads kept, per layer in the DeciLM
  form); a one-line UserError for what it cannot hold."""
  family = family_of(cfg)
  if form not in family.hf_forms:
    raise UserError(
      f"a {family.title} model exports as {' or '.join(family.hf_forms)}, not {form!r}"
    )
  return family.exportable(params, cfg, form)


def params_to_hf(params, cfg, form: str = "hf") -> dict[str, np.ndarray]:
  """Our params (any variant) -> HF state dict (see `exportable`)."""
  params, cfg = exportable(params, cfg, form)
  flat = traverse_util.flatten_dict(params)
  tensors = {
    row.key: np.ascontiguousarray(_to_hf(row.layout, np.asarray(flat[row.path])), np.float32)
    for row in table(cfg)
  }
  return family_of(cfg).hf_state_dict(params, cfg, form, tensors)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def _is_local(path: str) -> bool:
  return os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)


def resolve_hf_dir(path_or_id: str, config_only: bool = False) -> str:
  """A local directory holding config.json + weights, downloading a hub id if reachable
  (config_only: config.json alone, for reading a config without the weights)."""
  path = os.path.expanduser(path_or_id)
  if os.path.isdir(path):
    return path
  if _is_local(path_or_id) or path_or_id.count("/") > 1:
    raise MissingInput(f"no such checkpoint directory: {path_or_id!r}")
  try:
    from huggingface_hub import snapshot_download

    return snapshot_download(
      path_or_id,
      allow_patterns=["config.json"]
      if config_only
      else [
        "config.json",
        "generation_config.json",
        "*.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "spiece.model",
        "tokenizer*",
        "special_tokens_map.json",
      ],
    )
  except Exception as e:  # offline, unknown repo, auth ...
    raise MissingInput(
      f"{path_or_id!r} is not a local directory and could not be fetched from the Hugging "
      f"Face hub ({type(e).__name__}: {' '.join(str(e).split())[:240]}). Download it where "
      f"there is internet and pass the directory instead."
    ) from e


class Reader(Mapping):
  """A HF checkpoint's state dict, read one tensor at a time: HF key -> array (safetensors
  memory-mapped, bfloat16 included; a pytorch_model.bin is read whole, with torch). `cfg` is its
  model config; `read(path)` gives one of our params (float32, our layout)."""

  def __init__(self, path_or_id: str):
    self.dir = resolve_hf_dir(path_or_id)
    cfg_path = os.path.join(self.dir, "config.json")
    if not os.path.exists(cfg_path):
      raise MissingInput(f"{self.dir} has no config.json: not a Hugging Face model directory")
    self.hf_config = read_config(cfg_path)  # the family and its keys, before any weight
    self._where: dict[str, Any] = {}
    for file in _weight_files(self.dir):
      if file.endswith(".safetensors"):
        st = SafetensorsFile(file)
        self._where.update({k: st for k in st.keys()})
      else:
        self._where.update(_torch_state_dict(file))
    self.cfg = config_from_hf(self.hf_config, self)
    self._rows = (
      {row.path: row for row in table(self.cfg)} if family_of(self.cfg).hf_holds(self.cfg) else {}
    )
    self._param_shapes = None

  def __getitem__(self, key: str):
    where = self._where[key]
    return where.view(key) if isinstance(where, SafetensorsFile) else where

  def __iter__(self):
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)

  def read(self, path: tuple[str, ...]) -> np.ndarray:
    if self._param_shapes is None:
      self._param_shapes = _shapes(self.cfg)
    return _read_row(self._rows[path], self, self._param_shapes[path])


def _torch_state_dict(file: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise MissingDependency(
      f"{file} is a PyTorch pickle; reading it needs torch "
      f"(pip install 'wgqa_jax[torch]'), or convert it to safetensors"
    ) from e
  import pickle

  try:  # weights_only: a pickle that would run code is refused, not executed
    state = torch.load(file, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
    why = (
      "it holds Python objects beyond tensors, which could run code"
      if "weights only" in str(e).lower()
      else cli.first_line(e, 160)
    )
    raise UserError(
      f"{file} was refused: {why}. Convert it to safetensors with a tool you "
      f"trust, or use another checkpoint"
    ) from None
  if not isinstance(state, dict):
    raise UserError(f"{file} holds a {type(state).__name__}, not a state dict")
  return {k: v.float().numpy() for k, v in state.items()}


def _weight_files(path: str) -> list[str]:
  for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    if os.path.exists(os.path.join(path, index)):
      try:
        with open(os.path.join(path, index)) as f:
          shards = sorted(set(json.load(f)["weight_map"].values()))
        assert all(isinstance(s, str) and os.path.basename(s) == s for s in shards)
      except (ValueError, KeyError, TypeError, AttributeError, AssertionError):
        raise UserError(
          f"{os.path.join(path, index)} is not a shard index (torn or damaged: download the "
          f"checkpoint again)"
        ) from None
      missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
      if missing:
        raise MissingInput(
          f"{path} is incomplete: {index} names {missing[0]}, which is not there"
          f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: download or "
          f"copy the checkpoint again"
        )
      return [os.path.join(path, s) for s in shards]
  for name in ("model.safetensors", "pytorch_model.bin"):
    if os.path.exists(os.path.join(path, name)):
      return [os.path.join(path, name)]
  raise MissingInput(
    f"{path} has no model.safetensors or pytorch_model.bin (found: {sorted(os.listdir(path))})"
  )


def read_config(path: str) -> dict[str, Any]:
  """A HF config.json, checked to name a family we have and the keys its config needs."""
  try:
    with open(path) as f:
      hf_config = json.load(f)
    config_from_hf(hf_config)
  except ValueError as e:  # not JSON, or not a config we can read
    raise UserError(f"{path}: {e}") from None
  return hf_config


def from_hf(path_or_id: str):
  """(params, config) of a HF checkpoint: T5 (MHA) or Llama / Mistral (its own G heads);
  variants.from_mha() groups MHA params. wgqa_jax.store.streaming reads one without holding it
  whole."""
  reader = Reader(path_or_id)
  return hf_to_params(reader, reader.cfg), reader.cfg


def generation_settings(path_or_id: str) -> dict[str, Any]:
  """A HF checkpoint's generation settings (wgqa_jax.store.generation_file.from_hf_dir)."""
  path = resolve_hf_dir(path_or_id)
  with open(os.path.join(path, "config.json")) as f:
    return generation_file.from_hf_dir(path, json.load(f))


def save_hf(
  params,
  cfg,
  out_dir: str,
  generation_settings: dict | None = None,
  form: str = "hf",
  tokenizer=None,
) -> None:
  """Write a transformers-loadable directory (model.safetensors + config.json, and the
  generation settings as generation_config.json / task_specific_params when given): T5 with MHA
  heads, Llama as a native GQA model with G heads (form "hf") or per-layer G (form "decilm").
  `tokenizer` (wgqa_jax.data.tokenizers): its files go beside the weights
  (wgqa_jax.store.tokenizer_files), so that an engine tokenizes as we do."""
  from safetensors.numpy import save_file

  from wgqa_jax.core.workdir import writing_dir
  from wgqa_jax.store import tokenizer_files

  params, cfg = exportable(params, cfg, form)
  with writing_dir(out_dir) as tmp:  # an old export's shards and index go whole
    if tokenizer is not None:  # first: a tokenizer no file holds is refused before the weights
      tokenizer_files.write(tokenizer, cfg, tmp)
    save_file(
      params_to_hf(params, cfg, form),
      os.path.join(tmp, "model.safetensors"),
      metadata={"format": "pt"},
    )
    settings = generation_settings or {}
    hf_cfg = cfg.to_hf(form)
    if settings.get("task_specific_params"):
      hf_cfg["task_specific_params"] = settings["task_specific_params"]
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_cfg, f, indent=2)
    if settings.get("generation_config"):
      with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump(settings["generation_config"], f, indent=2)
