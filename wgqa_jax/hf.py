"""Hugging Face checkpoints <-> our params: one declarative key table per family, used both ways.

    params, cfg = hf.from_hf("t5-small")          # local dir or hub id; MHA params + T5Config
    hf.save_hf(params, cfg, out_dir)              # transformers-loadable (KV heads expanded)
    params, cfg = hf.from_hf(llama_dir)           # Llama / Mistral: LlamaConfig; G heads as saved
    hf.save_hf(folded, cfg, out_dir)              # a native GQA Llama: num_key_value_heads = G

The family comes from config.json's model_type. T5 in HF has MHA heads only, so T5 exports expand
KV heads back to H; Llama's num_key_value_heads holds G, so Llama exports keep G heads.

A table row is (our param path, HF key, layout, aliases). The layout says how a PyTorch
[out, in] tensor becomes our kernel and back, so reading and writing cannot drift apart:
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
from typing import Any, Iterator, NamedTuple

import numpy as np
from flax import traverse_util

from wgqa_jax import cli, variants
from wgqa_jax.decoding import settings as generation_settings_file
from wgqa_jax import models
from wgqa_jax.models.llama_config import LlamaConfig
from wgqa_jax.models.t5_config import T5Config
from wgqa_jax.tensor_files import SafetensorsFile

log = logging.getLogger(__name__)


class Row(NamedTuple):
  path: tuple[str, ...]     # our param path
  key: str                  # HF state-dict key
  layout: str               # same | T | heads_in | heads_out
  aliases: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------
# T5's table
# ----------------------------------------------------------------------------------------------
_T5_ATTENTION = {  # our module -> (HF sub-layer index, HF module name, our norm name)
    ("encoder", "attention"): (0, "SelfAttention", "attention_norm"),
    ("decoder", "self_attention"): (0, "SelfAttention", "self_attention_norm"),
    ("decoder", "cross_attention"): (1, "EncDecAttention", "cross_attention_norm"),
}
_T5_MLP_INDEX = {"encoder": 1, "decoder": 2}


def t5_table(cfg: T5Config) -> Iterator[Row]:
  yield Row(("shared", "embedding"), "shared.weight", "same",
            ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"))
  for stack, n in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    yield Row((stack, "relpos_bias", "rel_embedding"),
              f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "same")
    for i in range(n):
      ours = (stack, f"layers_{i}")
      for (st, module), (j, hf_name, norm) in _T5_ATTENTION.items():
        if st != stack:
          continue
        pre = f"{stack}.block.{i}.layer.{j}"
        yield Row(ours + (norm, "scale"), f"{pre}.layer_norm.weight", "same")
        for w in "qkv":
          yield Row(ours + (module, w), f"{pre}.{hf_name}.{w}.weight", "heads_in")
        yield Row(ours + (module, "o"), f"{pre}.{hf_name}.o.weight", "heads_out")
      pre = f"{stack}.block.{i}.layer.{_T5_MLP_INDEX[stack]}"
      yield Row(ours + ("mlp_norm", "scale"), f"{pre}.layer_norm.weight", "same")
      for w in (("wi_0", "wi_1") if cfg.is_gated else ("wi",)) + ("wo",):
        yield Row(ours + ("mlp", w), f"{pre}.DenseReluDense.{w}.weight", "T")
    yield Row((stack, "final_norm", "scale"), f"{stack}.final_layer_norm.weight", "same")
  if not cfg.tie_word_embeddings:
    # transformers >= 5 drops lm_head.weight when it equals the embedding.
    yield Row(("lm_head",), "lm_head.weight", "T", ("shared.weight",))


# ----------------------------------------------------------------------------------------------
# Llama's table (Llama, Mistral)
# ----------------------------------------------------------------------------------------------
def llama_table(cfg: LlamaConfig) -> Iterator[Row]:
  yield Row(("embed", "embedding"), "model.embed_tokens.weight", "same")
  for i in range(cfg.num_layers):
    ours, pre = (f"layers_{i}",), f"model.layers.{i}"
    yield Row(ours + ("input_norm", "scale"), f"{pre}.input_layernorm.weight", "same")
    yield Row(ours + ("post_attention_norm", "scale"), f"{pre}.post_attention_layernorm.weight",
              "same")
    for w in "qkv":
      yield Row(ours + ("attention", w), f"{pre}.self_attn.{w}_proj.weight", "heads_in")
    yield Row(ours + ("attention", "o"), f"{pre}.self_attn.o_proj.weight", "heads_out")
    for ours_name, hf_name in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
      yield Row(ours + ("mlp", ours_name), f"{pre}.mlp.{hf_name}.weight", "T")
  yield Row(("final_norm", "scale"), "model.norm.weight", "same")
  if not cfg.tie_word_embeddings:
    yield Row(("lm_head",), "lm_head.weight", "T")


def table(cfg) -> Iterator[Row]:
  return llama_table(cfg) if models.is_causal(cfg) else t5_table(cfg)


def _hf_holds(cfg) -> bool:
  """Whether HF's architecture can hold cfg's grouping as it is: T5 only MHA heads, Llama
  plain equal groups (num_key_value_heads)."""
  if models.is_causal(cfg):
    g = cfg.grouping
    return g.weights == "none" and not g.unequal and g.allocation == "static"
  return variants.is_mha(cfg)


# ----------------------------------------------------------------------------------------------
# Layouts, both ways
# ----------------------------------------------------------------------------------------------
def _hf_shape(layout: str, ours: tuple[int, ...]) -> tuple[int, ...]:
  if layout == "same":
    return ours
  if layout == "T":
    return ours[::-1]
  if layout == "heads_in":   # ours (d, H, dk)
    return (ours[1] * ours[2], ours[0])
  if layout == "heads_out":  # ours (H, dk, d)
    return (ours[2], ours[0] * ours[1])
  raise ValueError(f"unknown layout {layout!r}")


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
  return {k: tuple(v.shape) for k, v in
          traverse_util.flatten_dict(models.module_of(cfg).param_shapes(cfg)).items()}


def _key_of(row: Row, sd: Mapping[str, Any]) -> str | None:
  """The state-dict key holding row's tensor (its own key or an alias), None if absent."""
  return next((k for k in (row.key, *row.aliases) if k in sd), None)


def _read_row(row: Row, sd: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
  """One param in our layout (float32) from its HF tensor."""
  key = _key_of(row, sd)
  if key is None:
    raise KeyError(f"checkpoint is missing {row.key!r}" +
                   (f" (also tried {list(row.aliases)})" if row.aliases else "") +
                   f"; it has {len(sd)} tensors, e.g. {sorted(sd)[:3]}")
  value = sd[key]
  want = _hf_shape(row.layout, shape)
  if tuple(np.shape(value)) != want:
    raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(np.shape(value))}, but the "
                     f"config implies {want}: config and weights disagree")
  return np.ascontiguousarray(_to_ours(row.layout, np.asarray(value, np.float32), shape))


def hf_to_params(sd: Mapping[str, Any], cfg) -> dict:
  """HF state dict (numpy/torch tensors, PyTorch [out, in] layout; or a Reader) -> our params:
  MHA for T5, the checkpoint's own G KV heads for Llama."""
  if not _hf_holds(cfg):
    raise ValueError("hf_to_params builds the params HF holds; pass the HF config, then call "
                     "variants.from_mha()")
  shapes = _shapes(cfg)
  flat = {row.path: _read_row(row, sd, shapes[row.path]) for row in table(cfg)}
  ignored = sorted(k for k in set(sd) - {_key_of(row, sd) for row in table(cfg)}
                   if not k.endswith(("embed_tokens.weight", "lm_head.weight")))
  if ignored:
    log.warning("ignoring %d checkpoint tensors the model does not use: %s", len(ignored),
                ignored[:5])
  return traverse_util.unflatten_dict(flat)


def exportable(params, cfg):
  """(params, cfg) in the grouping HF holds: T5 expanded to MHA heads; Llama with WGQA weights
  folded, its G heads kept (a native GQA checkpoint)."""
  if models.is_causal(cfg):
    params, cfg = variants.fold(params, cfg)
    if not _hf_holds(cfg):
      raise ValueError(f"{cfg.grouping.describe(cfg.num_heads)}: HF Llama holds equal groups "
                       f"only; unequal or run-time groups cannot be exported")
    return params, cfg
  return variants.expand_to_mha(params, cfg)


def params_to_hf(params, cfg) -> dict[str, np.ndarray]:
  """Our params (any variant) -> HF state dict (see `exportable`)."""
  params, cfg = exportable(params, cfg)
  flat = traverse_util.flatten_dict(params)
  return {row.key: np.ascontiguousarray(_to_hf(row.layout, np.asarray(flat[row.path])),
                                        np.float32)
          for row in table(cfg)}


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
    raise FileNotFoundError(f"no such checkpoint directory: {path_or_id!r}")
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(path_or_id, allow_patterns=["config.json"] if config_only else [
        "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
        "pytorch_model.bin", "pytorch_model.bin.index.json", "spiece.model", "tokenizer*",
        "special_tokens_map.json"])
  except Exception as e:  # offline, unknown repo, auth ...
    raise FileNotFoundError(
        f"{path_or_id!r} is not a local directory and could not be fetched from the Hugging "
        f"Face hub ({type(e).__name__}: {' '.join(str(e).split())[:240]}). Download it where "
        f"there is internet and pass the directory instead.") from e


class Reader(Mapping):
  """A HF checkpoint's state dict, read one tensor at a time: HF key -> array (safetensors
  memory-mapped, bfloat16 included; a pytorch_model.bin is read whole, with torch). `cfg` is its
  model config; `read(path)` gives one of our params (float32, our layout)."""

  def __init__(self, path_or_id: str):
    self.dir = resolve_hf_dir(path_or_id)
    cfg_path = os.path.join(self.dir, "config.json")
    if not os.path.exists(cfg_path):
      raise FileNotFoundError(f"{self.dir} has no config.json: not a Hugging Face model directory")
    try:
      with open(cfg_path) as f:
        self.hf_config = json.load(f)
      models.config_from_hf(self.hf_config)  # the family and its keys, before any weight
    except ValueError as e:
      raise ValueError(f"{cfg_path}: {e}") from None
    self._where: dict[str, Any] = {}
    for file in _weight_files(self.dir):
      if file.endswith(".safetensors"):
        st = SafetensorsFile(file)
        self._where.update({k: st for k in st.keys()})
      else:
        self._where.update(_torch_state_dict(file))
    self.cfg = config_from_hf(self.hf_config, self)
    self._rows = {row.path: row for row in table(self.cfg)} if _hf_holds(self.cfg) else {}
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
    raise ImportError(f"{file} is a PyTorch pickle; reading it needs torch "
                      f"(pip install 'wgqa_jax[torch]'), or convert it to safetensors") from e
  import pickle
  try:  # weights_only: a pickle that would run code is refused, not executed
    state = torch.load(file, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
    why = ("it holds Python objects beyond tensors, which could run code"
           if "weights only" in str(e).lower() else
           cli.first_line(e, 160))
    raise ValueError(f"{file} was refused: {why}. Convert it to safetensors with a tool you "
                     f"trust, or use another checkpoint") from None
  if not isinstance(state, dict):
    raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict")
  return {k: v.float().numpy() for k, v in state.items()}


def load_hf(path_or_id: str) -> tuple[Reader, dict[str, Any]]:
  """(state dict, config.json dict) of a HF checkpoint: a Reader, tensors read when used."""
  reader = Reader(path_or_id)
  return reader, reader.hf_config


def _weight_files(path: str) -> list[str]:
  for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    if os.path.exists(os.path.join(path, index)):
      with open(os.path.join(path, index)) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      return [os.path.join(path, s) for s in shards]
  for name in ("model.safetensors", "pytorch_model.bin"):
    if os.path.exists(os.path.join(path, name)):
      return [os.path.join(path, name)]
  raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin "
                          f"(found: {sorted(os.listdir(path))})")


def config_from_hf(hf_cfg: dict[str, Any], sd: dict[str, Any]):
  """The model config of a HF checkpoint, by its model_type: LlamaConfig, or T5Config.
  transformers >= 5 writes tie_word_embeddings=true even for an untied v1.1 model and saves
  lm_head.weight only when it differs from the embedding, so the weights, not the config, say
  whether a T5 output projection is shared."""
  cfg = models.config_from_hf(hf_cfg)
  if models.is_causal(cfg):
    return cfg
  head, shared = sd.get("lm_head.weight"), sd.get("shared.weight")
  if (cfg.tie_word_embeddings and head is not None and shared is not None
      and not np.array_equal(np.asarray(head), np.asarray(shared))):
    cfg = cfg.replace(tie_word_embeddings=False, scale_decoder_outputs=cfg.scales_decoder_outputs)
  return cfg


def from_hf(path_or_id: str):
  """(params, config) of a HF checkpoint: T5 (MHA) or Llama / Mistral (its own G heads);
  variants.from_mha() groups MHA params. wgqa_jax.streaming reads one without holding it whole."""
  reader = Reader(path_or_id)
  return hf_to_params(reader, reader.cfg), reader.cfg


def generation_settings(path_or_id: str) -> dict[str, Any]:
  """A HF checkpoint's generation settings (wgqa_jax.decoding.settings.from_hf_dir)."""
  path = resolve_hf_dir(path_or_id)
  with open(os.path.join(path, "config.json")) as f:
    return generation_settings_file.from_hf_dir(path, json.load(f))


def save_hf(params, cfg, out_dir: str, generation_settings: dict | None = None) -> None:
  """Write a transformers-loadable directory (model.safetensors + config.json, and the
  generation settings as generation_config.json / task_specific_params when given): T5 with MHA
  heads, Llama as a native GQA model with G heads."""
  from safetensors.numpy import save_file
  from wgqa_jax.workdir import writing_dir
  params, cfg = exportable(params, cfg)
  with writing_dir(out_dir) as tmp:  # an old export's shards and index go whole
    save_file(params_to_hf(params, cfg), os.path.join(tmp, "model.safetensors"),
              metadata={"format": "pt"})
    settings = generation_settings or {}
    hf_cfg = cfg.to_hf()
    if settings.get("task_specific_params"):
      hf_cfg["task_specific_params"] = settings["task_specific_params"]
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_cfg, f, indent=2)
    if settings.get("generation_config"):
      with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump(settings["generation_config"], f, indent=2)
