"""Flax Llama-architecture decoder (Llama 1/2/3, Mistral without sliding window) with grouped KV
heads, sharing wgqa_jax.models.attention with T5.

Numerically equal to HF PyTorch `LlamaForCausalLM` / `MistralForCausalLM` on converted weights
(tests/models/test_llama.py). RMSNorm in float32, RoPE (rotate-half, rope_theta) on q and k, SwiGLU
MLP, optional tied embeddings, logical axis names on every param.

Param tree (what hf.llama_table maps to HF names and variants.py converts):
  embed/embedding                      (vocab, hidden)
  layers_i/{input_norm, attention, post_attention_norm, mlp}
  attention: q (d, H, dk), k/v (d, G, dk) [WGQA: (d, H, dk) + wk/wv], o (H, dk, d)
  mlp: gate, up (d, ff); down (ff, d)
  final_norm/scale; lm_head (d, vocab) unless tied
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from wgqa_jax.core.sharding import constrain
from wgqa_jax.models import layers
from wgqa_jax.models.attention import NEG_INF, Attention, cache_slots
from wgqa_jax.models.llama.config import LlamaConfig
from wgqa_jax.models.ops import dense

_INIT = nn.initializers.normal(0.02)  # HF's initializer_range


def _dense(cfg: LlamaConfig, x, kernel):
  dtype = jnp.dtype(cfg.dtype)
  return dense(
    x.astype(dtype),
    kernel.astype(dtype),
    1,
    transpose_weight_grad_on_cpu=cfg.transpose_weight_grad_on_cpu,
  )


def RMSNorm(cfg, name: str | None = None) -> layers.RMSNorm:  # noqa: N802 (a module)
  return layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name=name)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    part, pdt = nn.with_logical_partitioning, jnp.dtype(cfg.param_dtype)
    d, ff = cfg.hidden_size, cfg.intermediate_size
    gate = self.param("gate", part(_INIT, ("embed", "mlp")), (d, ff), pdt)
    up = self.param("up", part(_INIT, ("embed", "mlp")), (d, ff), pdt)
    down = self.param("down", part(_INIT, ("mlp", "embed")), (ff, d), pdt)
    h = jax.nn.silu(_dense(cfg, x, gate)) * _dense(cfg, x, up)
    h = constrain(h, ("batch", "length", "mlp"))
    return _dense(cfg, h, down)


def attention(cfg: LlamaConfig, path: tuple[str, ...], name: str | None = None) -> Attention:
  """The one place Llama builds an attention module (at param path `path`, with its grouping):
  1/sqrt(head_dim) and RoPE."""
  return Attention(
    num_heads=cfg.num_heads,
    head_dim=cfg.head_dim,
    width=cfg.width,
    grouping=cfg.grouping_at(path),
    dropout_rate=0.0,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    transpose_weight_grad_on_cpu=cfg.transpose_weight_grad_on_cpu,
    backend=cfg.attention,
    query_scale=cfg.head_dim**-0.5,
    rope_theta=cfg.rope_theta,
    name=name,
  )


class DecoderLayer(nn.Module):
  config: LlamaConfig

  def setup(self):
    cfg = self.config
    self.input_norm = RMSNorm(cfg)
    self.attention = attention(cfg, (self.name, "attention"))
    self.post_attention_norm = RMSNorm(cfg)
    self.mlp = MLP(cfg)

  def __call__(self, x, bias, positions, cache=None, index=None):
    """cache: this layer's {"k", "v"} (b, max_len, ...: Llama.init_cache); x's K/V (MLA: latent
    and rotary key) are written at `index` and the queries attend over the whole cache (bias
    masks what is not there yet)."""
    h = self.input_norm(x)
    k, v = self.attention.project_kv(h, positions)
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, 1)
      v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, 1)
      cache = {"k": k, "v": v}
    x = x + self.attention.attend(h, k, v, bias, True, positions)
    x = x + self.mlp(self.post_attention_norm(x))
    return constrain(x, ("batch", "length", "embed")), cache


def causal_mask_bias(attention_mask, segment_ids=None):
  """(b, t) 1/0 mask (and packed segment ids) -> additive (b, 1, t, t) causal bias."""
  t = attention_mask.shape[1]
  i = jnp.arange(t)
  keep = (i[None, :] <= i[:, None])[None] & (attention_mask[:, None, :] > 0)
  if segment_ids is not None:
    keep = keep & (segment_ids[:, :, None] == segment_ids[:, None, :])
  return jnp.where(keep, 0.0, NEG_INF)[:, None].astype(jnp.float32)


class Llama(nn.Module):
  config: LlamaConfig

  def setup(self):
    cfg = self.config
    self.embed = nn.Embed(
      cfg.vocab_size,
      cfg.hidden_size,
      embedding_init=nn.with_logical_partitioning(_INIT, ("vocab", "embed")),
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
    )
    if cfg.scan_layers:  # training: one scanned layer (params stacked by layers.module_params)
      self.layers = layers.scan(
        layers.remat(DecoderLayer, cfg.remat, scanned=True), cfg.num_layers, broadcast_args=2
      )(cfg)
    else:
      self.layers = [layers.remat(DecoderLayer, cfg.remat)(cfg) for _ in range(cfg.num_layers)]
    self.final_norm = RMSNorm(cfg)
    if not cfg.tie_word_embeddings:
      self.lm_head = self.param(
        "lm_head",
        nn.with_logical_partitioning(_INIT, ("embed", "vocab")),
        (cfg.hidden_size, cfg.vocab_size),
        jnp.dtype(cfg.param_dtype),
      )

  def logits(self, x):
    x = self.final_norm(x)
    out = (
      self.embed.attend(x)
      if self.config.tie_word_embeddings
      else _dense(self.config, x, self.lm_head)
    )
    return constrain(out, ("batch", "length", "vocab")).astype(jnp.float32)

  def __call__(self, input_ids, attention_mask=None, positions=None, segment_ids=None):
    """Logits (b, t, vocab), float32. positions default to 0..t-1 (HF's forward without
    position_ids); attention_mask (b, t) masks padded keys; segment_ids: packed rows."""
    return self.logits(self.hidden(input_ids, attention_mask, positions, segment_ids))

  def hidden(self, input_ids, attention_mask=None, positions=None, segment_ids=None):
    """The last layer's output (b, t, hidden), before the final norm: what `logits` takes."""
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    x = constrain(self.embed(input_ids), ("batch", "length", "embed"))
    bias = causal_mask_bias(attention_mask, segment_ids)
    if self.config.scan_layers:
      x, _ = self.layers(x, bias, positions)
    else:
      for layer in self.layers:
        x, _ = layer(x, bias, positions)
    return x

  def init_cache(self, batch: int, max_len: int):
    """Per layer an empty cache of what its attention's project_kv gives: {"k", "v"} (batch,
    max_len, G, head_dim) for K/V heads; for MLA "k" holds the latent (batch, max_len, rank)
    and "v" the rotary key heads (batch, max_len, rope_heads, head_dim)."""
    cfg = self.config
    cache = []
    for i in range(cfg.num_layers):
      k, v = cache_slots(
        cfg.grouping_at((f"layers_{i}", "attention")), cfg.num_heads, cfg.head_dim, True
      )
      zeros = lambda tail: jnp.zeros((batch, max_len, *tail), jnp.dtype(cfg.dtype))
      cache.append({"k": zeros(k), "v": zeros(v)})
    return cache

  def extend(self, input_ids, positions, cache, index, key_mask):
    """Cached forward of input_ids (b, t) at cache slots index..index+t-1 (a prompt, or one new
    token): key_mask (b, max_len) marks the slots that hold real tokens. Returns (logits of
    the last of the t tokens (b, vocab), new cache)."""
    t, max_len = input_ids.shape[1], cache[0]["k"].shape[1]
    slots = index + jnp.arange(t)
    keep = (jnp.arange(max_len)[None, :] <= slots[:, None])[None] & (key_mask[:, None, :] > 0)
    bias = jnp.where(keep, 0.0, NEG_INF)[:, None].astype(jnp.float32)  # (b, 1, t, max_len)
    x = self.embed(input_ids)
    new_cache = []
    for layer, c in zip(self.layers, cache):
      x, c = layer(x, bias, positions, c, index)
      new_cache.append(c)
    return self.logits(x[:, -1:])[:, 0], new_cache


def init_params(config: LlamaConfig, rng, batch: int = 1, length: int = 8):
  """Random params in the per-layer layout, whatever config.scan_layers says."""
  ids = jnp.ones((batch, length), jnp.int32)
  return nn.unbox(Llama(layers.plain(config)).init(rng, ids)["params"])


@functools.lru_cache(maxsize=8)  # startup asks for shapes and axes many times (~1 s each at 70B)
def _abstract_variables(config: LlamaConfig):
  ids = jnp.ones((1, 8), jnp.int32)
  return jax.eval_shape(lambda: Llama(layers.plain(config)).init(jax.random.PRNGKey(0), ids))


def param_shapes(config: LlamaConfig):
  return nn.unbox(_abstract_variables(config)["params"])


def param_axes(config: LlamaConfig):
  return nn.get_partition_spec(_abstract_variables(config))["params"]
