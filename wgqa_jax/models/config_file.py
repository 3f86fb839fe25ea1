"""What every model config (a frozen dataclass: T5Config, LlamaConfig) does the same way:
`replace`, `save` as JSON, and `from_dict` that names unknown keys instead of a TypeError."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from wgqa_jax.core.errors import UserError

REMATS = ("none", "full", "dots")  # models.layers.REMAT_POLICIES (configs stay free of flax)
DTYPES = ("float32", "bfloat16", "float16")  # compute and param dtypes every family accepts
# models.attention's forms: einsum; jax.nn.dot_product_attention (cuDNN flash on a GPU that
# allows it, XLA otherwise); cuDNN flash only; "blockwise": keys in blocks with an online
# softmax, each block recomputed in the backward pass (docs/gpu.md)
ATTENTIONS = ("einsum", "dot_product", "cudnn", "blockwise")


class ConfigFile:
  """Mixin for the model config dataclasses; each defines `to_dict` (what is saved)."""

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump(self.to_dict(), f, indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]):
    d = cls._upgrade(dict(d))
    family = d.pop("family", cls.family)  # written by families whose files name it
    if family != cls.family:
      raise UserError(f"{cls.__name__}: this is a {family!r} model config")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise UserError(f"{cls.__name__}: unknown keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)

  @classmethod
  def _upgrade(cls, d: dict[str, Any]) -> dict[str, Any]:
    """A saved dict in today's keys (a family rewrites what older versions wrote)."""
    return d
