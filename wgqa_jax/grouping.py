"""How the H key/value heads of an MHA checkpoint become G groups.

Kernels here are K/V projection kernels laid out (d_model, heads, d_kv), as in our params.
Grouping is contiguous: original head h belongs to group h // (H / G), and so does query head h.

- mean_pool:        GQA / MQA conversion (Ainslie et al. 2023): each group's kernel is the mean.
- weighted_sum:     WGQA (Chinnakonduru & Mohapatra 2024): each group's kernel is sum_i w_i K_i over
                    its heads; w has one scalar per head ("row", shape (H,)) or one per head and
                    output dim ("col", shape (H, d_kv)). With w = 1/group_size it *is* mean_pool.
- expand:           the inverse direction for export: repeat each group's kernel for its H/G query
                    heads, giving MHA kernels with identical outputs.
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp


def _check(num_heads: int, num_groups: int) -> int:
  if num_groups <= 0 or num_heads % num_groups:
    raise ValueError(f"cannot group {num_heads} heads into {num_groups} groups: "
                     f"{num_heads} is not divisible by {num_groups}")
  return num_heads // num_groups


def mean_pool(kernel, num_groups: int):
  """(d, H, dk) -> (d, G, dk): the mean of each group's adjacent heads."""
  d, h, dk = kernel.shape
  size = _check(h, num_groups)
  xp = np if isinstance(kernel, np.ndarray) else jnp
  return xp.mean(kernel.reshape(d, num_groups, size, dk), axis=2)


def weighted_sum(kernel, weights, num_groups: int):
  """(d, H, dk) kernels, (H,) or (H, dk) weights -> (d, G, dk) grouped kernels."""
  d, h, dk = kernel.shape
  size = _check(h, num_groups)
  if weights.shape not in ((h,), (h, dk)):
    raise ValueError(f"WGQA weights must have shape ({h},) or ({h}, {dk}), got {weights.shape}")
  w = weights[:, None] if weights.ndim == 1 else weights  # (H, 1 | dk)
  weighted = kernel * w[None].astype(kernel.dtype)
  return weighted.reshape(d, num_groups, size, dk).sum(axis=2)


def expand(kernel, num_heads: int):
  """(d, G, dk) -> (d, H, dk): every query head gets a copy of its group's kernel."""
  d, g, dk = kernel.shape
  size = _check(num_heads, g)
  xp = np if isinstance(kernel, np.ndarray) else jnp
  return xp.repeat(kernel, size, axis=1)


def wgqa_weight_shape(mode: str, num_heads: int, d_kv: int) -> tuple[int, ...]:
  if mode == "row":
    return (num_heads,)
  if mode == "col":
    return (num_heads, d_kv)
  raise ValueError(f"WGQA mode must be 'row' or 'col', got {mode!r}")


def wgqa_init_weights(mode: str, num_heads: int, d_kv: int, init: str = "constant",
                      value: float = 0.5, rng: np.random.Generator | None = None) -> np.ndarray:
  """Initial WGQA weights: `value` everywhere (WGQA) or standard normal (RandWGQA)."""
  shape = wgqa_weight_shape(mode, num_heads, d_kv)
  if init == "constant":
    return np.full(shape, value, np.float32)
  if init == "normal":
    rng = rng if rng is not None else np.random.default_rng(0)
    return rng.standard_normal(shape).astype(np.float32)
  raise ValueError(f"WGQA init must be 'constant' or 'normal', got {init!r}")
