"""T5 architecture hyperparameters, with one nested `grouping` section (one frozen dataclass).

The same object describes an MHA checkpoint, its GQA/MQA conversion and a WGQA model under
uptraining: only `grouping` differs (wgqa_jax.grouping.variants.Grouping).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping.variants import MHA, Grouping
from wgqa_jax.models.config_file import ATTENTIONS, DTYPES, REMATS, ConfigFile

ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")


@dataclasses.dataclass(frozen=True)
class T5Config(ConfigFile):
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  # "relu" (T5 v1.0), "gated-gelu" (v1.1 / flan: gelu_new), "gated-silu", "gelu", ...
  feed_forward_proj: str = "relu"
  # v1.0: the output projection is the input embedding ...
  tie_word_embeddings: bool = True
  # ... and the decoder output is scaled by d_model**-0.5 first. None = same as tie_word_embeddings.
  scale_decoder_outputs: bool | None = None
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0

  # ---- grouped key/value attention (wgqa_jax.grouping.variants) ----
  grouping: Grouping = MHA

  # ---- numerics ----
  dtype: str = "float32"  # compute dtype (activations); "bfloat16" on accelerators
  param_dtype: str = "float32"
  # ops.dense: on XLA:CPU, materialise x^T for the weight gradient (faster there); off only to
  # measure what it buys (benchmarks/run.py).
  transpose_weight_grad_on_cpu: bool = True
  attention: str = "einsum"  # models.attention's backend (config_file.ATTENTIONS)
  # ---- memory and compile time (training only; params keep the per-layer layout) ----
  remat: str = "none"  # none | full | dots (wgqa_jax.models.layers.REMAT_POLICIES)
  scan_layers: bool = False  # each stack one scanned layer: compile time flat in depth

  family = "t5"
  rotary_keys = False  # no rotary embeddings: a merge may map keys freely

  def __post_init__(self):
    def bad(msg):
      raise UserError(f"T5Config: {msg}")

    for name in (
      "vocab_size",
      "d_model",
      "d_kv",
      "d_ff",
      "num_heads",
      "num_encoder_layers",
      "num_decoder_layers",
      "relative_attention_num_buckets",
      "relative_attention_max_distance",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        bad(f"{name} must be a positive int, got {value!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      bad(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
    _ = self.ffn_activation  # validates feed_forward_proj
    if isinstance(self.grouping, dict):  # from JSON
      object.__setattr__(self, "grouping", Grouping.from_dict(self.grouping))
    self.grouping.validate(self.num_heads)
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        bad(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
    if self.remat not in REMATS:
      bad(f"remat must be one of {REMATS}, got {self.remat!r}")
    if self.attention not in ATTENTIONS:
      bad(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
    if self.scan_layers and self.grouping.per_module:
      bad(
        "per-module KV heads give the layers different shapes: they cannot be scanned "
        "(scan_layers=False)"
      )

  # ---- derived ----
  @property
  def head_dim(self) -> int:
    """Dims of each attention head (models.family: every family's config has it)."""
    return self.d_kv

  @property
  def kv_heads(self) -> int:
    """G of the grouped attention modules."""
    return self.grouping.num_kv_heads(self.num_heads)

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def ffn_activation(self) -> str:
    parts = self.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise UserError(
        f"T5Config: feed_forward_proj must be 'ACT' or 'gated-ACT', got {self.feed_forward_proj!r}"
      )
    act = parts[-1]
    if self.feed_forward_proj == "gated-gelu":  # HF: v1.1 checkpoints use the tanh approximation
      act = "gelu_new"
    if act not in ACTIVATIONS:
      raise UserError(
        f"T5Config: unsupported activation {act!r} in feed_forward_proj; supported: {ACTIVATIONS}"
      )
    return act

  @property
  def scales_decoder_outputs(self) -> bool:
    if self.scale_decoder_outputs is None:
      return self.tie_word_embeddings
    return self.scale_decoder_outputs

  def is_grouped(self, stack: str) -> bool:
    """The decoder's self- and cross-attention are grouped (as in the GQA and WGQA papers), the
    encoder only with grouping.group_encoder."""
    return stack == "decoder" or self.grouping.group_encoder

  def grouping_of(self, stack: str) -> Grouping:
    return self.grouping if self.is_grouped(stack) else MHA

  def grouping_at(self, path: tuple[str, ...]) -> Grouping:
    """The grouping of the attention module at param path `path`: its stack's, with the
    module's own G when the KV budget is allocated per module."""
    if path[0] not in ("encoder", "decoder"):
      raise ValueError(f"{path!r} is not a T5 attention module path")
    return self.grouping_of(path[0]).at(path)

  def kv_heads_at(self, path: tuple[str, ...]) -> int:
    """KV heads of one attention module (what its params and decode cache hold)."""
    return self.grouping_at(path).num_kv_heads(self.num_heads)

  def reorderable_heads(self, path: tuple[str, ...]) -> bool:
    """Whether an attention module's heads may be reordered without changing the model: not
    in self-attention, whose relative position bias (one table per stack) is per head."""
    return path[-1] == "cross_attention"

  @property
  def width(self) -> int:
    """The width of every attention module's inputs (models.family)."""
    return self.d_model

  def attention_modules(self):
    """(param path, grouped) of every attention module: what wgqa_jax.grouping.variants
    converts."""
    for i in range(self.num_encoder_layers):
      yield ("encoder", f"layers_{i}", "attention"), self.is_grouped("encoder")
    for i in range(self.num_decoder_layers):
      yield ("decoder", f"layers_{i}", "self_attention"), self.is_grouped("decoder")
      yield ("decoder", f"layers_{i}", "cross_attention"), self.is_grouped("decoder")

  def cached_modules(self) -> list[tuple[str, ...]]:
    """The grouped attention modules that hold a decode cache: the decoder's self- and
    cross-attention (the encoder runs once per input)."""
    return [p for p, grouped in self.attention_modules() if grouped and p[0] == "decoder"]

  # ---- (de)serialisation (replace, save, from_dict: ConfigFile) ----
  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def _upgrade(cls, d: dict[str, Any]) -> dict[str, Any]:
    return _upgrade_flat_grouping(d)

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> T5Config:
    """From a Hugging Face T5 config.json dict (any transformers version)."""
    if hf.get("model_type", "t5") not in ("t5", "mt5"):
      raise UserError(f"not a T5 config: model_type={hf.get('model_type')!r}")
    tie = hf.get("tie_word_embeddings", True)
    # transformers >= 5 always writes tie_word_embeddings=True and records the v1.0 scaling
    # separately; older configs use tie_word_embeddings=False to mean "v1.1: untied, no scaling".
    scale = hf.get("scale_decoder_outputs", tie)
    kwargs = dict(
      vocab_size=hf["vocab_size"],
      d_model=hf["d_model"],
      d_kv=hf["d_kv"],
      d_ff=hf["d_ff"],
      num_heads=hf["num_heads"],
      num_encoder_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      dropout_rate=hf.get("dropout_rate", 0.1),
      layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
      feed_forward_proj=hf.get("feed_forward_proj", "relu"),
      tie_word_embeddings=bool(tie),
      scale_decoder_outputs=bool(scale),
      pad_token_id=hf.get("pad_token_id", 0) or 0,
      eos_token_id=_first(hf.get("eos_token_id", 1)),
      decoder_start_token_id=hf.get("decoder_start_token_id", 0) or 0,
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self, form: str = "hf") -> dict[str, Any]:
    """A config.json that transformers (4.x and 5.x) loads as this model with MHA heads (the
    one form T5 exports)."""
    return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": self.vocab_size,
      "d_model": self.d_model,
      "d_kv": self.d_kv,
      "d_ff": self.d_ff,
      "num_heads": self.num_heads,
      "num_layers": self.num_encoder_layers,
      "num_decoder_layers": self.num_decoder_layers,
      "relative_attention_num_buckets": self.relative_attention_num_buckets,
      "relative_attention_max_distance": self.relative_attention_max_distance,
      "dropout_rate": self.dropout_rate,
      "layer_norm_epsilon": self.layer_norm_epsilon,
      "feed_forward_proj": self.feed_forward_proj,
      "tie_word_embeddings": self.tie_word_embeddings,
      "scale_decoder_outputs": self.scales_decoder_outputs,
      "is_encoder_decoder": True,
      "pad_token_id": self.pad_token_id,
      "eos_token_id": self.eos_token_id,
      "decoder_start_token_id": self.decoder_start_token_id,
    }


# wgqa_config.json files written before the grouping section existed held these flat keys.
_FLAT_GROUPING_KEYS = {
  "num_kv_heads": "kv_heads",
  "group_encoder": "group_encoder",
  "wgqa": "weights",
  "wgqa_init": "weights_init",
  "wgqa_init_value": "weights_init_value",
  "kv_group_sizes": "group_sizes",
  "kv_allocation": "allocation",
  "attention_noise": "attention_noise",
}


def _upgrade_flat_grouping(d: dict[str, Any]) -> dict[str, Any]:
  flat = {new: d.pop(old) for old, new in _FLAT_GROUPING_KEYS.items() if old in d}
  if flat:
    d["grouping"] = {**d.get("grouping", {}), **flat}
  return d


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) else x


# Named architectures. "tiny" is the offline default; the others match the public checkpoints.
# The rows of a table (ruff format would give each value its own line).
# fmt: off
_V1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
PRESETS: dict[str, dict[str, Any]] = {
  "tiny": dict(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_heads=4,
               num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0),
  # the conversion lab's offline MHA model (benchmarks/pareto): 8 heads, budgets down to 1/8
  "tiny-8head": dict(vocab_size=512, d_model=128, d_kv=16, d_ff=256, num_heads=8,
                     num_encoder_layers=3, num_decoder_layers=3, dropout_rate=0.0),
  "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_heads=8,
                   num_encoder_layers=6, num_decoder_layers=6),
  "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_heads=12,
                  num_encoder_layers=12, num_decoder_layers=12),
  "t5-v1_1-small": dict(d_model=512, d_kv=64, d_ff=1024, num_heads=6,
                        num_encoder_layers=8, num_decoder_layers=8, **_V1_1),
  "t5-v1_1-base": dict(d_model=768, d_kv=64, d_ff=2048, num_heads=12,
                       num_encoder_layers=12, num_decoder_layers=12, **_V1_1),
  # the GQA paper's sizes (the planner, configs/scale.py)
  "t5-v1_1-xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_heads=32,
                     num_encoder_layers=24, num_decoder_layers=24, **_V1_1),
  "t5-v1_1-xxl": dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
                      num_encoder_layers=24, num_decoder_layers=24, **_V1_1),
}
# fmt: on


def preset(name: str, **overrides) -> T5Config:
  if name not in PRESETS:
    raise UserError(f"unknown architecture preset {name!r}; known: {sorted(PRESETS)}")
  return T5Config(**{**PRESETS[name], **overrides})
