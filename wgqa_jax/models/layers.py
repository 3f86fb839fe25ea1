"""Layers every model family shares (attention is wgqa_jax.attention)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
  """T5's layer norm and Llama's RMSNorm: no mean subtraction, no bias, computed in float32,
  the result in the compute dtype."""
  dim: int
  eps: float
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (self.dim,), jnp.dtype(self.param_dtype))
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (jnp.asarray(scale, jnp.float32) * x).astype(jnp.dtype(self.dtype))
