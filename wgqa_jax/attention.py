"""T5 attention with H query heads and G key/value heads (MHA: G = H, MQA: G = 1).

Query heads are grouped contiguously, (H,) -> (G, H/G), and the H/G query heads of a group are
stacked as extra query rows against their one KV head, so K/V are never repeated in memory:
activations and decode caches hold G heads.

In WGQA mode the module keeps all H original K/V kernels plus learnable weights `wk`, `wv` and
forms the G grouped kernels as weighted sums on the fly (grouping.weighted_sum); `convert.fold`
later bakes the weights in, leaving a plain GQA module with identical outputs.

T5 specifics: no 1/sqrt(d_kv) scaling of the logits (the init absorbs it), an additive relative
position bias shared by all layers of a stack, no biases on projections.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wgqa_jax import grouping
from wgqa_jax.ops import dense
from wgqa_jax.config import T5Config

NEG_INF = float(np.finfo(np.float32).min)


def _normal(stddev: float):
  return nn.initializers.normal(stddev=stddev)


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int):
  """Bucket (memory_position - query_position) exactly as Mesh TF / HF T5 do."""
  rel = jnp.asarray(relative_position, jnp.int32)
  buckets = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (rel > 0).astype(jnp.int32) * num_buckets
    rel = jnp.abs(rel)
  else:
    rel = -jnp.minimum(rel, 0)
  max_exact = num_buckets // 2
  is_small = rel < max_exact
  # log of a clipped value: positions < max_exact take the other branch anyway.
  rel_f = jnp.maximum(rel, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(rel_f / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, rel, large)


class RelativePositionBias(nn.Module):
  """One table (num_buckets, H) per stack; returns an additive bias (1, H, q_len, k_len)."""
  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions, key_positions):
    cfg = self.config
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(_normal(cfg.d_model ** -0.5), ("relpos_buckets", "heads")),
        (cfg.relative_attention_num_buckets, cfg.num_heads), jnp.dtype(cfg.param_dtype))
    rel = key_positions[None, :] - query_positions[:, None]  # (q, k)
    buckets = relative_position_bucket(rel, self.bidirectional,
                                       cfg.relative_attention_num_buckets,
                                       cfg.relative_attention_max_distance)
    bias = jnp.take(jnp.asarray(table, jnp.float32), buckets, axis=0)  # (q, k, H)
    return jnp.transpose(bias, (2, 0, 1))[None]


class Attention(nn.Module):
  """Multi-head attention with `num_kv_heads` K/V heads, optionally WGQA-weighted."""
  config: T5Config
  num_kv_heads: int
  wgqa: str = "none"  # "none" | "row" | "col"
  grouped: bool = False  # the grouping options (unequal groups, allocation, PGQA noise) apply

  def setup(self):
    cfg = self.config
    h, g, dk, d = cfg.num_heads, self.num_kv_heads, cfg.d_kv, cfg.d_model
    if h % g and not self.unequal_groups:
      raise ValueError(f"num_heads={h} is not divisible by num_kv_heads={g}")
    pdt = jnp.dtype(cfg.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)
    part = nn.with_logical_partitioning
    # HF T5 init (so a random model trains like theirs): q absorbs the 1/sqrt(d_kv) scale.
    self.q = self.param("q", part(_normal((d * dk) ** -0.5), ("embed", "heads", "kv")),
                        (d, h, dk), pdt)
    self.o = self.param("o", part(_normal((h * dk) ** -0.5), ("heads", "kv", "embed")),
                        (h, dk, d), pdt)
    if self.wgqa == "none":
      kv_axes, kv_heads = ("embed", "kv_heads", "kv"), g
    else:
      kv_axes, kv_heads = ("embed", "heads", "kv"), h  # the H original heads, still trainable
    self.k = self.param("k", part(_normal(d ** -0.5), kv_axes), (d, kv_heads, dk), pdt)
    self.v = self.param("v", part(_normal(d ** -0.5), kv_axes), (d, kv_heads, dk), pdt)
    if self.wgqa != "none":
      shape = grouping.wgqa_weight_shape(self.wgqa, h, dk)
      axes = ("heads",) if self.wgqa == "row" else ("heads", "kv")
      if cfg.wgqa_init == "normal":
        init = nn.initializers.normal(stddev=1.0)
      else:
        init = nn.initializers.constant(cfg.wgqa_init_value)
      self.wk = self.param("wk", part(init, axes), shape, pdt)
      self.wv = self.param("wv", part(init, axes), shape, pdt)

  @property
  def unequal_groups(self) -> bool:
    cfg = self.config
    return self.grouped and (cfg.kv_group_sizes is not None or cfg.kv_allocation != "static")

  def kv_index(self, k):
    """(H,) or (b, H) KV head of each query head, for unequal / dynamic groups."""
    cfg = self.config
    if cfg.kv_allocation == "static":
      return jnp.asarray(grouping.kv_index(cfg.num_heads, self.num_kv_heads, cfg.kv_group_sizes))
    if cfg.kv_allocation == "key_norm":  # KDGQA: this forward pass's keys, per example
      norms = jnp.sqrt(jnp.sum(jnp.square(k.astype(jnp.float32)), axis=(1, 3)))  # (b, G)
    else:  # DGQA: the K kernels, which move as uptraining goes on
      norms = jnp.sqrt(jnp.sum(jnp.square(self.grouped_kv_kernels()[0]), axis=(0, 2)))  # (G,)
    counts = grouping.allocate_queries(jax.lax.stop_gradient(norms), cfg.num_heads)
    return grouping.kv_index_from_counts(counts, cfg.num_heads)

  def grouped_kv_kernels(self):
    """The (d_model, G, d_kv) K and V kernels the attention actually uses."""
    if self.wgqa == "none":
      return self.k, self.v
    g = self.num_kv_heads
    return (grouping.weighted_sum(self.k, self.wk, g), grouping.weighted_sum(self.v, self.wv, g))

  def project_kv(self, inputs_kv):
    """(b, s, d_model) -> K, V each (b, s, G, d_kv): what a decode cache stores."""
    dtype = jnp.dtype(self.config.dtype)
    k_kernel, v_kernel = self.grouped_kv_kernels()
    x = inputs_kv.astype(dtype)
    k = dense(x, k_kernel.astype(dtype))  # (b, s, G, d_kv)
    v = dense(x, v_kernel.astype(dtype))
    return k, v

  def attend(self, inputs_q, k, v, bias, deterministic: bool):
    """inputs_q (b, t, d_model); k, v (b, s, G, d_kv); bias broadcastable to (b, H, t, s)."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h, g, dk = cfg.num_heads, self.num_kv_heads, cfg.d_kv
    b, t, _ = inputs_q.shape
    q = dense(inputs_q.astype(dtype), self.q.astype(dtype))  # (b, t, H, d_kv)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    if self.unequal_groups:
      return self._attend_gathered(q, k, v, bias, deterministic)
    r = h // g
    # (b, t, H, dk) -> (b, G, R*t, dk): each KV head's R query heads become extra query rows, so
    # both contractions are plain batched matmuls over (b, G); K/V are never repeated.
    q = q.reshape(b, t, g, r, dk).transpose(0, 2, 3, 1, 4).reshape(b, g, r * t, dk)
    s = k.shape[1]
    logits = jnp.einsum("bgqk,bsgk->bgqs", q, k)  # no 1/sqrt(dk) in T5
    logits = logits.reshape(b, g, r, t, s).astype(jnp.float32)
    if bias is not None:
      bias = jnp.asarray(bias, jnp.float32)
      if bias.shape[1] == 1:  # a mask, the same for every head
        bias = bias[:, :, None]
      else:
        bias = bias.reshape(bias.shape[0], g, r, *bias.shape[-2:])
      logits = logits + bias
    weights = self._softmax(logits, deterministic)
    out = jnp.einsum("bgqs,bsgk->bgqk", weights.astype(dtype).reshape(b, g, r * t, s), v)
    out = out.reshape(b, g, r, t, dk).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dk)
    return self._out(out)

  def _softmax(self, logits, deterministic):
    noise = self.config.attention_noise
    if self.grouped and noise > 0 and not deterministic:
      # PGQA: perturb the attention maps of the (static) groups while uptraining.
      logits = logits - noise * jax.random.normal(self.make_rng("dropout"), logits.shape)
    weights = jax.nn.softmax(logits, axis=-1)
    return self.dropout(weights, deterministic=deterministic)

  def _out(self, out):
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return dense(out, self.o.astype(jnp.dtype(self.config.dtype)), n_in=2)

  def _attend_gathered(self, q, k, v, bias, deterministic):
    """Unequal groups: gather each query head's KV head (activations only; caches keep G)."""
    idx = jnp.broadcast_to(self.kv_index(k), (q.shape[0], q.shape[2]))[:, None, :, None]
    kq, vq = jnp.take_along_axis(k, idx, axis=2), jnp.take_along_axis(v, idx, axis=2)
    logits = jnp.einsum("bthk,bshk->bhts", q, kq).astype(jnp.float32)
    if bias is not None:
      logits = logits + jnp.asarray(bias, jnp.float32)
    weights = self._softmax(logits, deterministic)
    out = jnp.einsum("bhts,bshk->bthk", weights.astype(q.dtype), vq)
    return self._out(out)

  def __call__(self, inputs_q, inputs_kv, bias, deterministic: bool = True):
    k, v = self.project_kv(inputs_kv)
    return self.attend(inputs_q, k, v, bias, deterministic)
