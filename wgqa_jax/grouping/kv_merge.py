"""How the H key/value heads of an MHA checkpoint become G groups.

Kernels here are K/V projection kernels laid out (d_model, heads, d_kv), as in our params.
Grouping is contiguous: original head h belongs to group h // (H / G), and so does query head h.

- mean_pool:        GQA / MQA conversion (Ainslie et al. 2023): each group's kernel is the mean.
- weighted_sum:     WGQA (Chinnakonduru & Mohapatra 2024): each group's kernel is sum_i w_i K_i over
                    its heads; w has one scalar per head ("row", shape (H,)) or one per head and
                    output dim ("col", shape (H, d_kv)). With w = 1/group_size it *is* mean_pool.
- expand:           the inverse direction for export: copy each group's kernel to its query heads
                    (kv_index), giving MHA kernels with identical outputs.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from wgqa_jax.core.errors import UserError


def _check(num_heads: int, num_groups: int) -> int:
  if num_groups <= 0 or num_heads % num_groups:
    raise UserError(
      f"cannot group {num_heads} heads into {num_groups} groups: "
      f"{num_heads} is not divisible by {num_groups}"
    )
  return num_heads // num_groups


def mean_pool(kernel, num_groups: int, sizes=None):
  """(d, H, dk) -> (d, G, dk): the mean of each group's adjacent heads (equal groups, or the
  contiguous group `sizes` of AsymGQA)."""
  d, h, dk = kernel.shape
  xp = np if isinstance(kernel, np.ndarray) else jnp
  if sizes is not None:
    kv_index(h, num_groups, sizes)  # validates
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return xp.stack([kernel[:, a : a + n].mean(axis=1) for a, n in zip(starts, sizes)], axis=1)
  size = _check(h, num_groups)
  return xp.mean(kernel.reshape(d, num_groups, size, dk), axis=2)


def weighted_sum(kernel, weights, num_groups: int):
  """(d, H, dk) kernels, (H,) or (H, dk) weights -> (d, G, dk) grouped kernels."""
  d, h, dk = kernel.shape
  size = _check(h, num_groups)
  if weights.shape not in ((h,), (h, dk)):
    raise ValueError(f"WGQA weights must have shape ({h},) or ({h}, {dk}), got {weights.shape}")
  w = weights[:, None] if weights.ndim == 1 else weights  # (H, 1 | dk)
  # in float32 whatever the params' dtype (bf16 params: model.param_dtype), so the model while
  # training and the fold after it compute the same sums
  weighted = kernel.astype("float32") * w[None].astype("float32")
  return weighted.reshape(d, num_groups, size, dk).sum(axis=2).astype(kernel.dtype)


def expand(kernel, num_heads: int, sizes=None):
  """(d, G, dk) -> (d, H, dk): every query head gets a copy of its group's kernel."""
  index = kv_index(num_heads, kernel.shape[1], sizes)
  return kernel[:, index]


def kv_index(num_heads: int, num_groups: int, sizes=None) -> np.ndarray:
  """(H,) KV head of each query head: contiguous equal groups, or contiguous `sizes`."""
  if sizes is not None:
    if len(sizes) != num_groups or sum(sizes) != num_heads:
      raise UserError(
        f"group sizes {list(sizes)} must be {num_groups} sizes summing to {num_heads}"
      )
    return np.repeat(np.arange(num_groups), sizes)
  return np.arange(num_heads) // _check(num_heads, num_groups)


def wgqa_weight_shape(mode: str, num_heads: int, d_kv: int) -> tuple[int, ...]:
  if mode == "row":
    return (num_heads,)
  if mode == "col":
    return (num_heads, d_kv)
  raise ValueError(f"WGQA mode must be 'row' or 'col', got {mode!r}")


def wgqa_init_weights(
  mode: str,
  num_heads: int,
  d_kv: int,
  init: str = "constant",
  value: float = 0.5,
  rng: np.random.Generator | None = None,
) -> np.ndarray:
  """Initial WGQA weights: `value` everywhere (WGQA) or standard normal (RandWGQA)."""
  shape = wgqa_weight_shape(mode, num_heads, d_kv)
  if init == "constant":
    return np.full(shape, value, np.float32)
  if init == "normal":
    rng = rng if rng is not None else np.random.default_rng(0)
    return rng.standard_normal(shape).astype(np.float32)
  raise ValueError(f"WGQA init must be 'constant' or 'normal', got {init!r}")


# ----------------------------------------------------------------------------------------------
# SimGQA: regroup heads by query similarity (Chinnakonduru et al. 2024, "Enhancement of GQA")
# ----------------------------------------------------------------------------------------------
def query_similarity(q_kernel) -> np.ndarray:
  """(H, H) cosine similarity of the flattened query heads of a (d, H, dk) kernel."""
  q = np.asarray(q_kernel, np.float64)
  flat = np.transpose(q, (1, 0, 2)).reshape(q.shape[1], -1)
  flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
  return flat @ flat.T


def similarity_groups(q_kernel, num_groups: int) -> list[list[int]]:
  """Equal-size groups of mutually similar query heads, greedily: each group starts from the most
  similar unassigned pair and grows by the head with the highest mean similarity to it."""
  sim = query_similarity(q_kernel)
  h = sim.shape[0]
  size = _check(h, num_groups)
  free = list(range(h))
  groups = []
  for _ in range(num_groups):
    if size == 1:
      group = [free[0]]
    else:
      pairs = [(sim[i, j], i, j) for a, i in enumerate(free) for j in free[a + 1 :]]
      _, i, j = max(pairs)  # ties resolve to the largest indices deterministically
      group = [i, j]
      while len(group) < size:
        rest = [k for k in free if k not in group]
        group.append(max(rest, key=lambda k: (sim[k, group].mean(), -k)))
    groups.append(sorted(group))
    free = [k for k in free if k not in group]
  return groups


def permute_heads(attn: dict, perm) -> dict:
  """Reorder the heads of an MHA module's q, k, v, o (and WGQA weights) consistently: the
  module computes exactly the same function, but head perm[i] now sits at position i."""
  perm = np.asarray(perm)
  out = dict(attn)
  for name in ("q", "k", "v"):
    out[name] = np.asarray(attn[name])[:, perm]
  out["o"] = np.asarray(attn["o"])[perm]
  for name in ("wk", "wv"):
    if name in attn:
      out[name] = np.asarray(attn[name])[perm]
  return out


# ----------------------------------------------------------------------------------------------
# Unequal groups: AsymGQA-style static sizes, KDGQA / DGQA key-norm allocation
# ----------------------------------------------------------------------------------------------
def allocate_queries(norms, num_heads: int):
  """Split num_heads query heads over KV heads in proportion to their norms (KDGQA): every KV
  head gets at least one query, the rest by largest remainder. norms (..., G) -> (..., G) ints."""
  norms = jnp.asarray(norms, jnp.float32)
  g = norms.shape[-1]
  spare = num_heads - g
  share = spare * norms / jnp.maximum(norms.sum(-1, keepdims=True), 1e-12)
  base = jnp.floor(share)
  left = spare - base.sum(-1, keepdims=True)
  # rank of each remainder (0 = largest); ties go to the lower KV head index
  rem = share - base
  order = jnp.argsort(-rem, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  return (1 + base + (rank < left)).astype(jnp.int32)


def kv_index_from_counts(counts, num_heads: int):
  """(..., G) query counts -> (..., H) contiguous KV index of each query head."""
  ends = jnp.cumsum(counts, axis=-1)
  heads = jnp.arange(num_heads)
  return jnp.sum(heads[..., None, :] >= ends[..., :, None], axis=-2).astype(jnp.int32)
