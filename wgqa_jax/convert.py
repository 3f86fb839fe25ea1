"""Hugging Face T5 checkpoints <-> our params; MHA -> GQA / MQA / WGQA; fold; export.

    python -m wgqa_jax.convert --hf=t5-small --out=/tmp/t5s_gqa4 --variant=gqa --kv_heads=4
    python -m wgqa_jax.convert --params=/tmp/run/export --fold --out=/tmp/folded
    python -m wgqa_jax.convert --params=/tmp/folded --export_hf=/tmp/hf_out   # transformers loads it

Library:
    sd, hf_cfg = load_hf(path_or_id)              # numpy state dict + config.json dict (no torch
    cfg = T5Config.from_hf(hf_cfg)                #   needed for safetensors)
    params = hf_to_params(sd, cfg)                # MHA params
    params, cfg = group(params, cfg, "wgqa", 4)   # MHA -> variant
    params, cfg = fold(params, cfg)               # WGQA -> plain GQA, identical outputs
    save_hf(params, cfg, out_dir)                 # GQA heads expanded to MHA for transformers

Our own format: a directory holding `params.safetensors` (keys are '/'-joined tree paths) and
`wgqa_config.json` (T5Config), written by `save` and read by `load`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Iterator

import numpy as np

from wgqa_jax import grouping
from wgqa_jax.config import T5Config

log = logging.getLogger(__name__)

CONFIG_FILE = "wgqa_config.json"
PARAMS_FILE = "params.safetensors"


# ----------------------------------------------------------------------------------------------
# Variants: name -> how MHA becomes it.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
  wgqa: str = "none"         # "none" | "row" | "col"
  wgqa_init: str = "constant"
  kv_heads: int | None = None  # fixed head count (MHA: None = H, MQA: 1), else from --kv_heads
  similarity: bool = False   # SimGQA: regroup heads by query similarity before pooling
  allocation: str = "static"  # "key_norm" (KDGQA) | "kernel_norm" (DGQA)
  noise: float = 0.0         # PGQA attention-logit noise std while training
  asymmetric: bool = False   # AsymGQA: needs group_sizes


VARIANTS = {
    "mha": Variant(),
    "mqa": Variant(kv_heads=1),
    "gqa": Variant(),
    "wgqa": Variant(wgqa="row"),
    "randwgqa": Variant(wgqa="row", wgqa_init="normal"),
    "colwgqa": Variant(wgqa="col"),
    "colrandwgqa": Variant(wgqa="col", wgqa_init="normal"),
    "simgqa": Variant(similarity=True),
    "kdgqa": Variant(allocation="key_norm"),
    "dgqa": Variant(allocation="kernel_norm"),
    "pgqa": Variant(noise=0.1),
    "asymgqa": Variant(asymmetric=True),
}


def variant_kv_heads(variant: str, num_heads: int, kv_heads: int | None) -> int:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
  v = VARIANTS[variant]
  if variant == "mha":
    return num_heads
  if v.kv_heads is not None:
    return v.kv_heads
  if kv_heads is None:
    raise ValueError(f"variant {variant!r} needs kv_heads (the number of groups G)")
  return kv_heads


# ----------------------------------------------------------------------------------------------
# Where the attention modules live in the param tree.
# ----------------------------------------------------------------------------------------------
def attention_modules(cfg: T5Config) -> Iterator[tuple[str, str, str]]:
  """(stack, layer, module) of every attention module."""
  for i in range(cfg.num_encoder_layers):
    yield "encoder", f"layers_{i}", "attention"
  for i in range(cfg.num_decoder_layers):
    yield "decoder", f"layers_{i}", "self_attention"
    yield "decoder", f"layers_{i}", "cross_attention"


def grouped_modules(cfg: T5Config) -> Iterator[tuple[str, str, str]]:
  """The attention modules that grouping applies to (decoder; encoder if cfg.group_encoder)."""
  for stack, layer, module in attention_modules(cfg):
    if stack == "decoder" or cfg.group_encoder:
      yield stack, layer, module


def _copy_tree(tree):
  return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}


def _np(x):
  return np.asarray(x)


# ----------------------------------------------------------------------------------------------
# MHA <-> variants
# ----------------------------------------------------------------------------------------------
def group(params, cfg: T5Config, variant: str, kv_heads: int | None = None, *,
          group_encoder: bool | None = None, seed: int = 0, group_sizes=None,
          attention_noise: float | None = None):
  """Convert MHA params into `variant` with G = kv_heads groups. Returns (params, cfg).

  group_sizes: AsymGQA's contiguous group sizes (G of them, summing to H).
  attention_noise: PGQA's noise std (default 0.1).
  """
  if cfg.kv_heads != cfg.num_heads or cfg.wgqa != "none":
    raise ValueError(f"group() needs MHA params; these have num_kv_heads={cfg.kv_heads}, "
                     f"wgqa={cfg.wgqa!r} (fold/expand them first)")
  v = VARIANTS.get(variant)
  if v is not None and v.asymmetric:
    if not group_sizes:
      raise ValueError("asymgqa needs group_sizes, e.g. [3, 1, 2, 2]")
    kv_heads = len(group_sizes)
  elif group_sizes:
    raise ValueError(f"group_sizes only apply to asymgqa, not {variant!r}")
  g = variant_kv_heads(variant, cfg.num_heads, kv_heads)
  new_cfg = cfg.replace(
      num_kv_heads=g, wgqa=v.wgqa, wgqa_init=v.wgqa_init, kv_allocation=v.allocation,
      kv_group_sizes=tuple(group_sizes) if v.asymmetric else None,
      attention_noise=v.noise if attention_noise is None else attention_noise,
      group_encoder=cfg.group_encoder if group_encoder is None else group_encoder)
  out = _copy_tree(params)
  rng = np.random.default_rng(seed)
  for stack, layer, module in grouped_modules(new_cfg):
    p = out[stack][layer][module]
    if v.similarity:
      # Reorder the heads so that similar ones are neighbours, then pool neighbours. Exact for
      # cross-attention; in self-attention the shared relative-position table stays in place
      # (as in the seed repository), so permuted heads read other bias rows.
      order = [h for grp in grouping.similarity_groups(p["q"], g) for h in grp]
      p = out[stack][layer][module] = grouping.permute_heads(p, order)
    if v.wgqa == "none":
      p["k"] = grouping.mean_pool(_np(p["k"]), g, new_cfg.kv_group_sizes)
      p["v"] = grouping.mean_pool(_np(p["v"]), g, new_cfg.kv_group_sizes)
    else:
      for name in ("wk", "wv"):
        p[name] = grouping.wgqa_init_weights(v.wgqa, cfg.num_heads, cfg.d_kv, v.wgqa_init,
                                             cfg.wgqa_init_value, rng)
  return out, new_cfg


def fold(params, cfg: T5Config):
  """WGQA -> plain GQA: bake the learned weights into the grouped K/V kernels."""
  if cfg.wgqa == "none":
    return params, cfg
  out = _copy_tree(params)
  for stack, layer, module in grouped_modules(cfg):
    p = out[stack][layer][module]
    p["k"] = grouping.weighted_sum(_np(p["k"]), _np(p.pop("wk")), cfg.kv_heads)
    p["v"] = grouping.weighted_sum(_np(p["v"]), _np(p.pop("wv")), cfg.kv_heads)
  return out, cfg.replace(wgqa="none")


def expand_to_mha(params, cfg: T5Config):
  """GQA/MQA (or WGQA, folded first) -> MHA params with identical outputs."""
  params, cfg = fold(params, cfg)
  if cfg.kv_heads == cfg.num_heads:
    return params, cfg
  if cfg.kv_allocation != "static":
    raise ValueError(f"kv_allocation={cfg.kv_allocation!r} decides the grouping at run time; "
                     f"it has no fixed MHA equivalent to export")
  out = _copy_tree(params)
  for stack, layer, module in grouped_modules(cfg):
    p = out[stack][layer][module]
    p["k"] = grouping.expand(_np(p["k"]), cfg.num_heads, cfg.kv_group_sizes)
    p["v"] = grouping.expand(_np(p["v"]), cfg.num_heads, cfg.kv_group_sizes)
  return out, cfg.replace(num_kv_heads=None, kv_group_sizes=None, attention_noise=0.0)


# ----------------------------------------------------------------------------------------------
# HF state dict <-> our params (MHA layout)
# ----------------------------------------------------------------------------------------------
def _hf_attention_names(stack: str, module: str) -> tuple[int, str, str]:
  """(HF sub-layer index, HF attention name, our norm name)."""
  return {
      ("encoder", "attention"): (0, "SelfAttention", "attention_norm"),
      ("decoder", "self_attention"): (0, "SelfAttention", "self_attention_norm"),
      ("decoder", "cross_attention"): (1, "EncDecAttention", "cross_attention_norm"),
  }[(stack, module)]


def _mlp_index(stack: str) -> int:
  return 1 if stack == "encoder" else 2


class _StateDict:
  """Checked access to a HF state dict: missing keys and wrong shapes fail with the key named."""

  def __init__(self, sd: dict[str, Any], cfg: T5Config):
    self.sd, self.cfg, self.used = sd, cfg, set()

  def get(self, key: str, shape: tuple[int, ...], *aliases: str) -> np.ndarray:
    for k in (key, *aliases):
      if k in self.sd:
        value = np.asarray(self.sd[k], np.float32)
        if value.shape != shape:
          raise ValueError(f"checkpoint tensor {k!r} has shape {value.shape}, but the config "
                           f"implies {shape}: config and weights disagree")
        self.used.add(k)
        return value
    raise KeyError(f"checkpoint is missing {key!r}" +
                   (f" (also tried {list(aliases)})" if aliases else "") +
                   f"; it has {len(self.sd)} tensors, e.g. {sorted(self.sd)[:3]}")


def hf_to_params(sd: dict[str, Any], cfg: T5Config) -> dict:
  """HF T5 state dict (numpy/torch tensors, PyTorch [out, in] layout) -> our MHA params."""
  if cfg.kv_heads != cfg.num_heads or cfg.wgqa != "none":
    raise ValueError("hf_to_params builds MHA params; pass the HF config, then call group()")
  s = _StateDict(sd, cfg)
  d, h, dk, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
  params: dict[str, Any] = {
      "shared": {"embedding": s.get("shared.weight", (cfg.vocab_size, d),
                                    "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}
  }
  for stack, n in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    tree: dict[str, Any] = {"relpos_bias": {"rel_embedding": s.get(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (cfg.relative_attention_num_buckets, h))}}
    for i in range(n):
      layer: dict[str, Any] = {}
      for st, _, module in attention_modules(cfg):
        if st != stack or _ != f"layers_{i}":
          continue
        idx, hf_name, norm = _hf_attention_names(stack, module)
        pre = f"{stack}.block.{i}.layer.{idx}"
        layer[norm] = {"scale": s.get(f"{pre}.layer_norm.weight", (d,))}
        layer[module] = {
            "q": s.get(f"{pre}.{hf_name}.q.weight", (h * dk, d)).T.reshape(d, h, dk),
            "k": s.get(f"{pre}.{hf_name}.k.weight", (h * dk, d)).T.reshape(d, h, dk),
            "v": s.get(f"{pre}.{hf_name}.v.weight", (h * dk, d)).T.reshape(d, h, dk),
            "o": s.get(f"{pre}.{hf_name}.o.weight", (d, h * dk)).T.reshape(h, dk, d),
        }
      pre = f"{stack}.block.{i}.layer.{_mlp_index(stack)}"
      layer["mlp_norm"] = {"scale": s.get(f"{pre}.layer_norm.weight", (d,))}
      wis = ("wi_0", "wi_1") if cfg.is_gated else ("wi",)
      layer["mlp"] = {w: s.get(f"{pre}.DenseReluDense.{w}.weight", (ff, d)).T for w in wis}
      layer["mlp"]["wo"] = s.get(f"{pre}.DenseReluDense.wo.weight", (d, ff)).T
      tree[f"layers_{i}"] = layer
    tree["final_norm"] = {"scale": s.get(f"{stack}.final_layer_norm.weight", (d,))}
    params[stack] = tree
  if not cfg.tie_word_embeddings:
    # transformers >= 5 drops lm_head.weight when it equals the embedding.
    params["lm_head"] = s.get("lm_head.weight", (cfg.vocab_size, d), "shared.weight").T
  ignored = sorted(k for k in set(sd) - s.used
                   if not k.endswith(("embed_tokens.weight", "lm_head.weight")))
  if ignored:
    log.warning("ignoring %d checkpoint tensors not used by T5: %s", len(ignored), ignored[:5])
  return _contiguous(params)


def params_to_hf(params, cfg: T5Config) -> dict[str, np.ndarray]:
  """Our params (any variant) -> HF T5 state dict with MHA heads (GQA heads expanded)."""
  params, cfg = expand_to_mha(params, cfg)
  d, h, dk = cfg.d_model, cfg.num_heads, cfg.d_kv
  sd: dict[str, np.ndarray] = {"shared.weight": _np(params["shared"]["embedding"])}
  for stack, n in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    tree = params[stack]
    sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = _np(
        tree["relpos_bias"]["rel_embedding"])
    for st, layer, module in attention_modules(cfg):
      if st != stack:
        continue
      i = int(layer.split("_")[1])
      idx, hf_name, norm = _hf_attention_names(stack, module)
      pre = f"{stack}.block.{i}.layer.{idx}"
      p = tree[layer][module]
      sd[f"{pre}.layer_norm.weight"] = _np(tree[layer][norm]["scale"])
      for name in ("q", "k", "v"):
        sd[f"{pre}.{hf_name}.{name}.weight"] = _np(p[name]).reshape(d, h * dk).T
      sd[f"{pre}.{hf_name}.o.weight"] = _np(p["o"]).reshape(h * dk, d).T
    for i in range(n):
      pre = f"{stack}.block.{i}.layer.{_mlp_index(stack)}"
      sd[f"{pre}.layer_norm.weight"] = _np(tree[f"layers_{i}"]["mlp_norm"]["scale"])
      for w, kernel in tree[f"layers_{i}"]["mlp"].items():
        sd[f"{pre}.DenseReluDense.{w}.weight"] = _np(kernel).T
    sd[f"{stack}.final_layer_norm.weight"] = _np(tree["final_norm"]["scale"])
  if not cfg.tie_word_embeddings:
    sd["lm_head.weight"] = _np(params["lm_head"]).T
  return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def _contiguous(tree):
  return {k: _contiguous(v) if isinstance(v, dict) else np.ascontiguousarray(v)
          for k, v in tree.items()}


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def _is_local(path: str) -> bool:
  return os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)


def resolve_hf_dir(path_or_id: str) -> str:
  """A local directory holding config.json + weights, downloading a hub id if reachable."""
  path = os.path.expanduser(path_or_id)
  if os.path.isdir(path):
    return path
  if _is_local(path_or_id) or path_or_id.count("/") > 1:
    raise FileNotFoundError(f"no such checkpoint directory: {path_or_id!r}")
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(path_or_id, allow_patterns=[
        "config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
        "pytorch_model.bin.index.json", "spiece.model", "tokenizer*", "special_tokens_map.json"])
  except Exception as e:  # offline, unknown repo, auth ...
    raise FileNotFoundError(
        f"{path_or_id!r} is not a local directory and could not be fetched from the Hugging "
        f"Face hub ({type(e).__name__}: {e}). Download it where there is internet and pass the "
        f"directory instead.") from e


def load_hf(path_or_id: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(numpy state dict, config.json dict) of a HF T5 checkpoint; torch only for .bin files."""
  path = resolve_hf_dir(path_or_id)
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
  with open(cfg_path) as f:
    hf_cfg = json.load(f)
  files = _weight_files(path)
  sd: dict[str, np.ndarray] = {}
  for file in files:
    if file.endswith(".safetensors"):
      from safetensors.numpy import load_file
      sd.update(load_file(file))
    else:
      try:
        import torch
      except ImportError as e:
        raise ImportError(f"{file} is a PyTorch pickle; reading it needs torch "
                          f"(pip install 'wgqa_jax[torch]'), or convert it to safetensors") from e
      state = torch.load(file, map_location="cpu", weights_only=True)
      sd.update({k: v.float().numpy() for k, v in state.items()})
  return sd, hf_cfg


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


def config_from_hf(hf_cfg: dict[str, Any], sd: dict[str, Any]) -> T5Config:
  """T5Config of a HF checkpoint. transformers >= 5 writes tie_word_embeddings=true even for an
  untied v1.1 model and saves lm_head.weight only when it differs from the embedding, so the
  weights, not the config, say whether the output projection is shared."""
  cfg = T5Config.from_hf(hf_cfg)
  head, shared = sd.get("lm_head.weight"), sd.get("shared.weight")
  if (cfg.tie_word_embeddings and head is not None and shared is not None
      and not np.array_equal(np.asarray(head), np.asarray(shared))):
    cfg = cfg.replace(tie_word_embeddings=False, scale_decoder_outputs=cfg.scales_decoder_outputs)
  return cfg


def from_hf(path_or_id: str, variant: str = "mha", kv_heads: int | None = None, **kw):
  """Load a HF T5 checkpoint as `variant`. Returns (params, cfg)."""
  sd, hf_cfg = load_hf(path_or_id)
  cfg = config_from_hf(hf_cfg, sd)
  params = hf_to_params(sd, cfg)
  if variant == "mha":
    return params, cfg
  return group(params, cfg, variant, kv_heads, **kw)


def save_hf(params, cfg: T5Config, out_dir: str) -> None:
  """Write a transformers-loadable T5 directory (model.safetensors + config.json)."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  params, cfg = expand_to_mha(params, cfg)
  save_file(params_to_hf(params, cfg), os.path.join(out_dir, "model.safetensors"),
            metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(cfg.to_hf(), f, indent=2)


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "/"))
    else:
      out[key] = np.ascontiguousarray(np.asarray(v))
  return out


def unflatten(flat: dict[str, Any]) -> dict:
  tree: dict[str, Any] = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def save(params, cfg: T5Config, out_dir: str) -> None:
  """Our format: params.safetensors + wgqa_config.json."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  save_file(flatten(params), os.path.join(out_dir, PARAMS_FILE))
  cfg.save(os.path.join(out_dir, CONFIG_FILE))


def load(path: str):
  """(params, cfg) from a directory written by `save`; checks params against the config."""
  from safetensors.numpy import load_file
  cfg_path, params_path = os.path.join(path, CONFIG_FILE), os.path.join(path, PARAMS_FILE)
  for p in (cfg_path, params_path):
    if not os.path.exists(p):
      raise FileNotFoundError(f"{path} is not a wgqa_jax params directory: missing {p}")
  cfg = T5Config.load(cfg_path)
  params = unflatten(load_file(params_path))
  check_params(params, cfg)
  return params, cfg


def check_params(params, cfg: T5Config) -> None:
  """Raise if `params` does not have exactly the shapes `cfg` implies."""
  from wgqa_jax import model
  expected = {k: tuple(v.shape) for k, v in _flat_shapes(model.param_shapes(cfg)).items()}
  got = {k: tuple(np.shape(v)) for k, v in _flat_shapes(params).items()}
  missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
  wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
  if missing or extra or wrong:
    raise ValueError(
        "params do not match the config:" +
        (f"\n  missing: {missing[:8]}" if missing else "") +
        (f"\n  unexpected: {extra[:8]}" if extra else "") +
        "".join(f"\n  {k}: has {got[k]}, config implies {expected[k]}" for k in wrong[:8]))


def _flat_shapes(tree, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat_shapes(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(
      prog="python -m wgqa_jax.convert",
      description="Convert HF T5 checkpoints into MHA/GQA/MQA/WGQA params, fold WGQA, export.")
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--hf", help="HF T5 checkpoint: local directory or hub id (e.g. t5-small)")
  src.add_argument("--params", help="a wgqa_jax params directory (written by this tool or train)")
  ap.add_argument("--variant", default="mha", choices=sorted(VARIANTS))
  ap.add_argument("--kv_heads", type=int, default=None, help="G, the number of KV heads")
  ap.add_argument("--group_encoder", action="store_true",
                  help="group the encoder self-attention too (default: decoder only)")
  ap.add_argument("--seed", type=int, default=0, help="RandWGQA init seed")
  ap.add_argument("--fold", action="store_true", help="fold WGQA weights into plain GQA kernels")
  ap.add_argument("--out", help="write wgqa_jax params here")
  ap.add_argument("--export_hf", help="write a HF T5 directory here (KV heads expanded to MHA)")
  args = ap.parse_args(argv)
  if not args.out and not args.export_hf:
    ap.error("nothing to write: pass --out and/or --export_hf")

  if args.hf:
    print(f"loading HF checkpoint {args.hf} ...")
    params, cfg = from_hf(args.hf, args.variant, args.kv_heads,
                          group_encoder=args.group_encoder, seed=args.seed)
  else:
    params, cfg = load(args.params)
    if args.variant != "mha":
      params, cfg = group(params, cfg, args.variant, args.kv_heads,
                          group_encoder=args.group_encoder, seed=args.seed)
  if args.fold:
    params, cfg = fold(params, cfg)
  n = sum(np.size(v) for v in flatten(params).values())
  print(f"model: {cfg.num_heads} heads, {cfg.kv_heads} KV heads, wgqa={cfg.wgqa}, "
        f"group_encoder={cfg.group_encoder}, {n / 1e6:.2f}M params")
  if args.out:
    save(params, cfg, args.out)
    print(f"wrote {args.out}")
  if args.export_hf:
    save_hf(params, cfg, args.export_hf)
    print(f"wrote HF T5 directory {args.export_hf}")
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  sys.exit(main())
