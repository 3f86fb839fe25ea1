"""Model families. Each family module gives a config dataclass (with a `grouping` section and
`attention_modules()`), Flax modules, `init_params`, `param_shapes` and `param_axes`; the grouping
code (wgqa_jax.attention, wgqa_jax.variants) is shared by all of them.

- t5: Flax T5 encoder-decoder (models/t5.py, config in models/t5_config.py).
- llama: Llama-architecture decoder, Llama / Mistral (models/llama.py, models/llama_config.py).
- layers: what the families share besides attention (RMSNorm).

A config's `family` class attribute ("t5", "llama") names it in saved files and picks its
decoding adapter (wgqa_jax/decoding/<family>.py).

Architecture presets (`preset(name)`, the training config's model.arch) are named across the
families: "tiny" and "t5-*" are T5, "llama-*" Llama.
"""
from __future__ import annotations

from typing import Any


def module_of(cfg):
  """The family module (t5 or llama) of a model config."""
  from wgqa_jax.models import llama, t5
  return llama if is_causal(cfg) else t5


def config_from_dict(d: dict[str, Any]):
  """A model config from its saved dict: `family` names it (absent: T5, as written before)."""
  from wgqa_jax.models.llama_config import LlamaConfig
  from wgqa_jax.models.t5_config import T5Config
  family = d.get("family", "t5")
  if family == "llama":
    return LlamaConfig.from_dict(d)
  if family != "t5":
    raise ValueError(f"unknown model family {family!r} (known: t5, llama)")
  return T5Config.from_dict({k: v for k, v in d.items() if k != "family"})


def config_from_hf(hf: dict[str, Any]):
  """A model config from a HF config.json dict, by its model_type."""
  from wgqa_jax.models.llama_config import MODEL_TYPES, LlamaConfig
  from wgqa_jax.models.t5_config import T5Config
  if not isinstance(hf, dict):
    raise ValueError(f"config.json holds a JSON {type(hf).__name__}, not an object")
  kind = hf.get("model_type")
  supported = ["t5", "mt5", *MODEL_TYPES]
  if kind is not None and kind not in supported:
    raise ValueError(f"model_type={kind!r} is not a family wgqa_jax has: {supported} "
                     f"(T5, and Llama-architecture decoders)")
  try:
    if kind in MODEL_TYPES:
      return LlamaConfig.from_hf(hf)
    return T5Config.from_hf(hf)
  except KeyError as e:
    family = "Llama" if kind in MODEL_TYPES else "T5"
    raise ValueError(f"config.json has no {e.args[0]!r}, which a {family} config needs"
                     + ("" if kind else " (and no model_type: read as T5)")) from None


def presets() -> dict[str, Any]:
  """Every architecture preset name -> its config class (names are unique across families)."""
  from wgqa_jax.models import llama_config, t5_config
  return {**{n: t5_config.T5Config for n in t5_config.PRESETS},
          **{n: llama_config.LlamaConfig for n in llama_config.PRESETS}}


def preset(name: str, **overrides):
  """The model config of architecture preset `name` (any family), `overrides` applied."""
  from wgqa_jax.models import llama_config, t5_config
  if name in llama_config.PRESETS:
    return llama_config.LlamaConfig(**{**llama_config.PRESETS[name], **overrides})
  if name in t5_config.PRESETS:
    return t5_config.preset(name, **overrides)
  raise ValueError(f"unknown architecture preset {name!r}; known: {sorted(presets())}")


def is_causal(cfg) -> bool:
  """A decoder-only model (trained as a causal LM on prompt + answer) rather than T5."""
  from wgqa_jax.models import llama_config
  return isinstance(cfg, llama_config.LlamaConfig)
