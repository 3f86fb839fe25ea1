"""Llama-architecture decoder hyperparameters (Llama 1/2/3, Mistral without sliding window), with
the same nested `grouping` section as T5Config (wgqa_jax.grouping.variants.Grouping).

HF's `num_key_value_heads` is the grouping: G == H is MHA, G < H a checkpoint that is already
GQA (plain mean-pooled groups as far as we are concerned), which can be re-grouped to fewer heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping.variants import MHA, Grouping
from wgqa_jax.models.config_file import ATTENTIONS, DTYPES, REMATS, ConfigFile
from wgqa_jax.models.llama import decilm, deepseek

MODEL_TYPES = ("llama", "mistral")


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ConfigFile):
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  head_dim: int = 128  # may differ from hidden_size / num_heads
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 2048
  pad_token_id: int = 0
  bos_token_id: int = 1
  eos_token_id: int = 2
  model_type: str = "llama"  # what to_hf writes back ("llama" | "mistral")

  # ---- grouped key/value attention (wgqa_jax.grouping.variants); every module is grouped ----
  grouping: Grouping = MHA

  # ---- numerics ----
  dtype: str = "float32"
  param_dtype: str = "float32"
  transpose_weight_grad_on_cpu: bool = True
  attention: str = "einsum"  # models.attention's backend (config_file.ATTENTIONS)
  dropout_rate: float = 0.0  # Llama trains without dropout; kept for the shared train loop
  # ---- memory and compile time (training only; params keep the per-layer layout) ----
  remat: str = "none"  # none | full | dots (wgqa_jax.models.layers.REMAT_POLICIES)
  scan_layers: bool = False  # the layers as one scanned layer: compile time flat in depth

  family = "llama"
  rotary_keys = True  # keys rotated by position: a merge's maps on keys must commute with it

  def __post_init__(self):
    for name in (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_layers",
      "num_heads",
      "head_dim",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise UserError(f"LlamaConfig: {name} must be a positive int, got {value!r}")
    if self.head_dim % 2:
      raise UserError(f"LlamaConfig: rotary embeddings need an even head_dim, got {self.head_dim}")
    if self.model_type not in MODEL_TYPES:
      raise UserError(f"LlamaConfig: model_type must be one of {MODEL_TYPES}")
    if isinstance(self.grouping, dict):  # from JSON
      object.__setattr__(self, "grouping", Grouping.from_dict(self.grouping))
    self.grouping.validate(self.num_heads)
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise UserError(f"LlamaConfig: {name} must be one of {DTYPES}")
    if self.remat not in REMATS:
      raise UserError(f"LlamaConfig: remat must be one of {REMATS}, got {self.remat!r}")
    if self.attention not in ATTENTIONS:
      raise UserError(f"LlamaConfig: attention must be one of {ATTENTIONS}, got {self.attention!r}")
    if self.scan_layers and self.grouping.per_module:
      raise UserError(
        "LlamaConfig: per-layer KV heads give the layers different shapes: they "
        "cannot be scanned (scan_layers=False)"
      )

  # ---- grouping, as T5Config ----
  @property
  def kv_heads(self) -> int:
    return self.grouping.num_kv_heads(self.num_heads)

  def is_grouped(self, stack: str = "decoder") -> bool:
    return True

  def grouping_at(self, path: tuple[str, ...]) -> Grouping:
    """The grouping of the attention module at param path `path` (its own G when the KV
    budget is allocated per layer)."""
    return self.grouping.at(path)

  def kv_heads_at(self, path: tuple[str, ...]) -> int:
    """KV heads of one layer's attention (what its params and decode cache hold)."""
    return self.grouping_at(path).num_kv_heads(self.num_heads)

  def reorderable_heads(self, path: tuple[str, ...]) -> bool:
    """Whether an attention module's heads may be reordered without changing the model: yes,
    no Llama parameter is tied to a head's position."""
    return True

  @property
  def width(self) -> int:
    """The width of every attention module's inputs (models.family)."""
    return self.hidden_size

  def attention_modules(self):
    """(param path, grouped) of every attention module: what wgqa_jax.grouping.variants
    converts."""
    for i in range(self.num_layers):
      yield (f"layers_{i}", "attention"), True

  def cached_modules(self) -> list[tuple[str, ...]]:
    """The grouped attention modules that hold a decode cache: every layer's."""
    return [p for p, grouped in self.attention_modules() if grouped]

  # ---- (de)serialisation (replace, save, from_dict: ConfigFile) ----
  def to_dict(self) -> dict[str, Any]:
    return {"family": self.family, **dataclasses.asdict(self)}

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> LlamaConfig:
    """From a HF LlamaConfig / MistralConfig dict (transformers 4.x or 5.x)."""
    model_type = hf.get("model_type", "llama")
    if model_type not in MODEL_TYPES:
      raise UserError(f"not a Llama-architecture config: model_type={model_type!r}")
    if model_type == "mistral" and hf.get("sliding_window") is not None:
      raise UserError(
        "Mistral with a sliding window is not supported (set sliding_window "
        "to null for models trained without it)"
      )
    if hf.get("attention_bias") or hf.get("mlp_bias"):
      raise UserError("projection biases (attention_bias / mlp_bias) are not supported")
    if hf.get("hidden_act", "silu") != "silu":
      raise UserError(f"hidden_act {hf.get('hidden_act')!r} is not supported (silu only)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
      raise UserError(
        f"rope scaling {rope.get('rope_type', rope.get('type'))!r} is not "
        f"supported (plain RoPE only)"
      )
    h = hf["num_attention_heads"]
    g = hf.get("num_key_value_heads") or h
    first = lambda x: x[0] if isinstance(x, (list, tuple)) else x
    kwargs = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=h,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // h,
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=hf.get("max_position_embeddings", 2048),
      pad_token_id=hf.get("pad_token_id") or 0,
      bos_token_id=first(hf.get("bos_token_id", 1)),
      eos_token_id=first(hf.get("eos_token_id", 2)),
      model_type=model_type,
      grouping=MHA if g == h else Grouping(kv_heads=g),
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self, form: str = "hf") -> dict[str, Any]:
    """A config.json transformers loads as a *native* GQA model: num_key_value_heads = G
    (form "hf"); or the DeciLM form, one block_configs entry per layer (form "decilm",
    models/llama/decilm.py), which holds per-layer G."""
    if self.grouping.weights != "none" or self.grouping.unequal:
      raise UserError(
        "fold WGQA weights (and keep equal groups) before exporting: HF Llama "
        "has plain equal groups"
      )
    if self.grouping.latent != (form == "deepseek"):
      deepseek.check(self)  # the one-line refusal either way
      raise UserError(
        f"an MLA model exports as --export=deepseek (DeepSeek-V3), not {form}: HF "
        f"{'DeciLM' if form == 'decilm' else 'Llama'} has no latent attention"
      )
    if form == "hf" and self.grouping.per_module:
      raise UserError(
        f"this model has per-layer KV heads "
        f"({','.join(str(g) for _, g in self.grouping.module_kv_heads)}), and a "
        f"Hugging Face Llama has one num_key_value_heads for every layer: export "
        f"--export=decilm (llama.cpp and vLLM serve it), or convert with one G for all layers"
      )
    arch = "MistralForCausalLM" if self.model_type == "mistral" else "LlamaForCausalLM"
    out = {
      "architectures": [arch],
      "model_type": self.model_type,
      "vocab_size": self.vocab_size,
      "hidden_size": self.hidden_size,
      "intermediate_size": self.intermediate_size,
      "num_hidden_layers": self.num_layers,
      "num_attention_heads": self.num_heads,
      "num_key_value_heads": self.kv_heads,
      "head_dim": self.head_dim,
      "rope_theta": self.rope_theta,
      "rms_norm_eps": self.rms_norm_eps,
      "tie_word_embeddings": self.tie_word_embeddings,
      "max_position_embeddings": self.max_position_embeddings,
      "hidden_act": "silu",
      "attention_bias": False,
      "mlp_bias": False,
      "pad_token_id": self.pad_token_id,
      "bos_token_id": self.bos_token_id,
      "eos_token_id": self.eos_token_id,
    }
    if self.model_type == "mistral":
      out["sliding_window"] = None
    if form == "deepseek":
      return deepseek.config(out, self)
    return decilm.config(out, self) if form == "decilm" else out


# Named architectures: the rows of a table (ruff format would give each value its own line).
# fmt: off
_LLAMA_2 = dict(vocab_size=32000, head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=4096)
PRESETS: dict[str, dict[str, Any]] = {
  # the offline decoder-only default (configs/llama_tiny.py)
  "llama-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=2,
                     num_heads=4, head_dim=16, max_position_embeddings=512),
  # the conversion lab's offline MHA model (benchmarks/pareto): 8 heads, so KV budgets go
  # down to 1/8, and enough width and depth for the heads to specialise
  "llama-tiny-8head": dict(vocab_size=512, hidden_size=128, intermediate_size=320, num_layers=4,
                           num_heads=8, head_dim=16, max_position_embeddings=512),
  # served by llama.cpp in the engine tests and benchmarks/serving.py: 8 heads (KV budgets to
  # 1/8), an FFN width DeciLM's per-layer format can hold (a multiple of 256), long contexts
  "llama-tiny-long": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=4,
                          num_heads=8, head_dim=16, max_position_embeddings=8192),
  # an MHA model of 1.3B params (TinyLlama-1.1B's shape, all 32 KV heads): benchmarks/gpu.py
  "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
                   **{**_LLAMA_2, "head_dim": 64}),
  # real shapes, as MHA checkpoints to uptrain (the planner, configs/scale.py). Llama-2-70B
  # itself ships with 8 KV heads: its GQA-8 rows are the released model's shape.
  "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                     **_LLAMA_2),
  "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40,
                      **_LLAMA_2),
  "llama-2-70b": dict(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64,
                      **_LLAMA_2),
}
# fmt: on
