"""Flax T5 encoder-decoder (v1.0 relu/tied and v1.1/flan gated-gelu/untied) with grouped KV heads.

Numerically equal to Hugging Face PyTorch T5 on converted weights (tests/test_models_t5.py).
Params are float32 (config.param_dtype), activations config.dtype; layer norms and softmax run in
float32. Every param carries logical axis names (embed, heads, kv_heads, kv, mlp, vocab,
relpos_buckets) that wgqa_jax.core.sharding maps onto a device mesh.

Param tree (what hf.py maps to HF names and variants.py converts):
  shared/embedding                               (vocab, d_model)
  {encoder,decoder}/relpos_bias/rel_embedding    (buckets, H)
  encoder/layers_i/{attention_norm, attention, mlp_norm, mlp}
  decoder/layers_i/{self_attention_norm, self_attention, cross_attention_norm, cross_attention,
                    mlp_norm, mlp}
  {encoder,decoder}/final_norm/scale             (d_model,)
  lm_head                                        (d_model, vocab), only when untied
  attention: q (d, H, dk), k/v (d, G, dk) [WGQA: (d, H, dk) + wk/wv], o (H, dk, d)
  mlp: wi (d, ff) | wi_0, wi_1 (d, ff); wo (ff, d)
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from wgqa_jax.core.sharding import constrain
from wgqa_jax.models import layers
from wgqa_jax.models.attention import NEG_INF, Attention, cache_slots
from wgqa_jax.models.ops import dense
from wgqa_jax.models.t5.config import T5Config


def _normal(stddev):
  return nn.initializers.normal(stddev=stddev)


def _dense(cfg: T5Config, x, kernel, n_in: int = 1):
  dtype = jnp.dtype(cfg.dtype)
  return dense(
    x.astype(dtype),
    kernel.astype(dtype),
    n_in,
    transpose_weight_grad_on_cpu=cfg.transpose_weight_grad_on_cpu,
  )


def attention(cfg: T5Config, path: tuple[str, ...], name: str | None = None) -> Attention:
  """The attention module at param path `path`, with its grouping (the one place T5 decides
  it; a scanned stack's one layer is "layers", which per-module KV heads refuse)."""
  return Attention(
    num_heads=cfg.num_heads,
    head_dim=cfg.d_kv,
    width=cfg.width,
    grouping=cfg.grouping_at(path),
    dropout_rate=cfg.dropout_rate,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    transpose_weight_grad_on_cpu=cfg.transpose_weight_grad_on_cpu,
    backend=cfg.attention,
    name=name,
  )


def relative_position_bucket(
  relative_position, bidirectional: bool, num_buckets: int, max_distance: int
):
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
  large = max_exact + (
    jnp.log(rel_f / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
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
      nn.with_logical_partitioning(_normal(cfg.d_model**-0.5), ("relpos_buckets", "heads")),
      (cfg.relative_attention_num_buckets, cfg.num_heads),
      jnp.dtype(cfg.param_dtype),
    )
    rel = key_positions[None, :] - query_positions[:, None]  # (q, k)
    buckets = relative_position_bucket(
      rel,
      self.bidirectional,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
    )
    bias = jnp.take(jnp.asarray(table, jnp.float32), buckets, axis=0)  # (q, k, H)
    return jnp.transpose(bias, (2, 0, 1))[None]


def RMSNorm(cfg, name: str | None = None) -> layers.RMSNorm:  # noqa: N802 (a module)
  return layers.RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name=name)


_ACT = {
  "relu": jax.nn.relu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "silu": jax.nn.silu,
}


class MLP(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.config
    dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    part = nn.with_logical_partitioning
    act = _ACT[cfg.ffn_activation]
    win = lambda name: self.param(
      name, part(_normal(cfg.d_model**-0.5), ("embed", "mlp")), (cfg.d_model, cfg.d_ff), pdt
    ).astype(dtype)
    x = x.astype(dtype)
    if cfg.is_gated:
      h = act(_dense(cfg, x, win("wi_0"))) * _dense(cfg, x, win("wi_1"))
    else:
      h = act(_dense(cfg, x, win("wi")))
    h = constrain(h, ("batch", "length", "mlp"))
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    wo = self.param(
      "wo", part(_normal(cfg.d_ff**-0.5), ("mlp", "embed")), (cfg.d_ff, cfg.d_model), pdt
    )
    return _dense(cfg, h, wo)


def _residual(cfg, x, y, deterministic):
  return x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    cfg = self.config
    h = RMSNorm(cfg, name="attention_norm")(x)
    h = attention(cfg, ("encoder", self.name, "attention"), name="attention")(
      h, h, bias, deterministic
    )
    x = _residual(cfg, x, h, deterministic)
    h = MLP(cfg, name="mlp")(RMSNorm(cfg, name="mlp_norm")(x), deterministic)
    return constrain(_residual(cfg, x, h, deterministic), ("batch", "length", "embed")), None


class DecoderLayer(nn.Module):
  config: T5Config

  def setup(self):
    cfg = self.config
    self.self_attention_norm = RMSNorm(cfg)
    self.self_attention = attention(cfg, ("decoder", self.name, "self_attention"))
    self.cross_attention_norm = RMSNorm(cfg)
    self.cross_attention = attention(cfg, ("decoder", self.name, "cross_attention"))
    self.mlp_norm = RMSNorm(cfg)
    self.mlp = MLP(cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _residual(self, x, y, deterministic):
    return x + self.dropout(y, deterministic=deterministic)

  def _cross_and_mlp(self, y, cross_k, cross_v, cross_bias, deterministic):
    # Beam search keeps one cross K/V per input for its n/b beams: their query rows are stacked
    # (cross-attention has no position bias, so each row attends as it would alone).
    n, t, d = y.shape
    h = self.cross_attention_norm(y).reshape(cross_k.shape[0], (n // cross_k.shape[0]) * t, d)
    h = self.cross_attention.attend(h, cross_k, cross_v, cross_bias, deterministic)
    h = h.reshape(n, t, d)
    y = self._residual(y, h, deterministic)
    return self._residual(y, self.mlp(self.mlp_norm(y), deterministic), deterministic)

  def __call__(self, y, encoded, self_bias, cross_bias, deterministic: bool):
    """(new y, None): a scan body's (carry, output)."""
    h = self.self_attention_norm(y)
    y = self._residual(y, self.self_attention(h, h, self_bias, deterministic), deterministic)
    y = self._cross_and_mlp(y, *self.cross_kv(encoded), cross_bias, deterministic)
    return constrain(y, ("batch", "length", "embed")), None

  def cross_kv(self, encoded):
    """Cross-attention K/V of the encoder output, (b, s, G, d_kv) each: computed once per input."""
    return self.cross_attention.project_kv(encoded)

  def step(self, y, index, cache, self_bias, cross_bias):
    """One cached decoding step. y (b, 1, d); cache holds self K/V (b, max_len, G, d_kv) and the
    cross K/V; writes position `index` of the self cache and returns (y, cache)."""
    h = self.self_attention_norm(y)
    k, v = self.self_attention.project_kv(h)
    self_k = jax.lax.dynamic_update_slice_in_dim(
      cache["self_k"], k.astype(cache["self_k"].dtype), index, axis=1
    )
    self_v = jax.lax.dynamic_update_slice_in_dim(
      cache["self_v"], v.astype(cache["self_v"].dtype), index, axis=1
    )
    h = self.self_attention.attend(h, self_k, self_v, self_bias, True)
    y = self._residual(y, h, True)
    y = self._cross_and_mlp(y, cache["cross_k"], cache["cross_v"], cross_bias, True)
    return y, {**cache, "self_k": self_k, "self_v": self_v}


def padding_bias(mask):
  """(b, s) 1/0 mask -> additive (b, 1, 1, s) float32 bias."""
  return jnp.where(mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)


def segment_bias(query_segments, key_segments, causal: bool = False):
  """Packed rows: (b, t), (b, s) segment ids (1, 2, ... per example, 0 on padding) -> additive
  (b, 1, t, s) float32 bias letting a query see only keys of its own example (and, causal, not
  after it). One where(), so no position is masked twice (NEG_INF + NEG_INF is -inf)."""
  keep = (query_segments[:, :, None] == key_segments[:, None, :]) & (key_segments[:, None, :] > 0)
  if causal:
    i = jnp.arange(query_segments.shape[1])
    keep = keep & (i[None, None, :] <= i[None, :, None])
  return jnp.where(keep, 0.0, NEG_INF)[:, None].astype(jnp.float32)


def causal_bias(length: int):
  i = jnp.arange(length)
  return jnp.where(i[None, :] <= i[:, None], 0.0, NEG_INF)[None, None].astype(jnp.float32)


class Encoder(nn.Module):
  config: T5Config
  embed: nn.Module

  @nn.compact
  def __call__(self, input_ids, attention_mask, deterministic: bool, segment_ids=None):
    cfg = self.config
    x = self.embed(input_ids)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))
    pos = jnp.arange(input_ids.shape[1])
    # Packed rows keep row indices here: within one example their differences are its relative
    # positions, and the segment bias masks every pair across examples.
    bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(pos, pos)
    bias = bias + (
      padding_bias(attention_mask)
      if segment_ids is None
      else segment_bias(segment_ids, segment_ids)
    )
    layer = layers.remat(EncoderLayer, cfg.remat, static_argnums=(3,), scanned=cfg.scan_layers)
    if cfg.scan_layers:  # training: one scanned layer (params stacked by layers.module_params)
      x, _ = layers.scan(layer, cfg.num_encoder_layers, broadcast_args=2)(cfg, name="layers")(
        x, bias, deterministic
      )
    else:
      for i in range(cfg.num_encoder_layers):
        x, _ = layer(cfg, name=f"layers_{i}")(x, bias, deterministic)
    x = RMSNorm(cfg, name="final_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  embed: nn.Module

  def setup(self):
    cfg = self.config
    self.relpos_bias = RelativePositionBias(cfg, bidirectional=False)
    if cfg.scan_layers:  # training: one scanned layer (params stacked by layers.module_params)
      self.layers = layers.scan(
        layers.remat(DecoderLayer, cfg.remat, static_argnums=(5,), scanned=True),
        cfg.num_decoder_layers,
        broadcast_args=4,
      )(cfg)
    else:
      self.layers = [
        layers.remat(DecoderLayer, cfg.remat, static_argnums=(5,))(cfg)
        for _ in range(cfg.num_decoder_layers)
      ]
    self.final_norm = RMSNorm(cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(
    self,
    decoder_input_ids,
    encoded,
    encoder_mask,
    decoder_mask,
    deterministic: bool,
    segment_ids=None,
    encoder_segment_ids=None,
  ):
    y = self.dropout(self.embed(decoder_input_ids), deterministic=deterministic)
    t = decoder_input_ids.shape[1]
    pos = jnp.arange(t)
    if segment_ids is not None:  # packed: each example sees only itself (see Encoder)
      self_bias = self.relpos_bias(pos, pos) + segment_bias(segment_ids, segment_ids, causal=True)
      cross_bias = segment_bias(segment_ids, encoder_segment_ids)
    else:
      self_bias = self.relpos_bias(pos, pos) + causal_bias(t)
      if decoder_mask is not None:
        self_bias = self_bias + padding_bias(decoder_mask)
      cross_bias = padding_bias(encoder_mask)
    if self.config.scan_layers:
      y, _ = self.layers(y, encoded, self_bias, cross_bias, deterministic)
    else:
      for layer in self.layers:
        y, _ = layer(y, encoded, self_bias, cross_bias, deterministic)
    return self.dropout(self.final_norm(y), deterministic=deterministic)

  def init_cache(self, encoded, max_len: int, beams: int = 1):
    """Per layer: cross K/V of `encoded` (one per input) and an empty self-attention cache for
    `beams` hypotheses per input, all with G heads (MLA: "k" the latent, "v" empty: no rotary
    keys; models.attention.cache_slots)."""
    b = encoded.shape[0] * beams
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    cache = []
    for i, layer in enumerate(self.layers):
      ck, cv = layer.cross_kv(encoded)
      grouping = cfg.grouping_at(("decoder", f"layers_{i}", "self_attention"))
      k, v = cache_slots(grouping, cfg.num_heads, cfg.d_kv, False)
      cache.append(
        {
          "self_k": jnp.zeros((b, max_len, *k), dtype),
          "self_v": jnp.zeros((b, max_len, *v), dtype),
          "cross_k": ck,
          "cross_v": cv,
        }
      )
    return cache

  def step(self, token_ids, index, cache, encoder_mask):
    """token_ids (b, 1) at position `index` -> (final hidden state (b, 1, d), new cache)."""
    max_len = cache[0]["self_k"].shape[1]
    y = self.embed(token_ids)
    keys = jnp.arange(max_len)
    self_bias = self.relpos_bias(jnp.reshape(index, (1,)), keys)
    self_bias = self_bias + jnp.where(keys <= index, 0.0, NEG_INF)[None, None, None, :]
    cross_bias = padding_bias(encoder_mask)
    new_cache = []
    for layer, c in zip(self.layers, cache):
      y, c = layer.step(y, index, c, self_bias, cross_bias)
      new_cache.append(c)
    return self.final_norm(y), new_cache


class T5(nn.Module):
  config: T5Config

  def setup(self):
    cfg = self.config
    self.shared = nn.Embed(
      cfg.vocab_size,
      cfg.d_model,
      embedding_init=nn.with_logical_partitioning(_normal(1.0), ("vocab", "embed")),
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
    )
    self.encoder = Encoder(cfg, self.shared)
    self.decoder = Decoder(cfg, self.shared)
    if not cfg.tie_word_embeddings:
      self.lm_head = self.param(
        "lm_head",
        nn.with_logical_partitioning(_normal(1.0), ("embed", "vocab")),
        (cfg.d_model, cfg.vocab_size),
        jnp.dtype(cfg.param_dtype),
      )

  def encode(self, input_ids, attention_mask=None, deterministic: bool = True, segment_ids=None):
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    return self.encoder(input_ids, attention_mask, deterministic, segment_ids)

  def logits(self, y):
    cfg = self.config
    if cfg.scales_decoder_outputs:
      y = y * cfg.d_model**-0.5
    if cfg.tie_word_embeddings:
      out = self.shared.attend(y)
    else:
      out = _dense(cfg, y, self.lm_head)
    out = constrain(out, ("batch", "length", "vocab"))
    return out.astype(jnp.float32)

  def decode(
    self,
    decoder_input_ids,
    encoded,
    encoder_mask=None,
    decoder_mask=None,
    deterministic: bool = True,
    segment_ids=None,
    encoder_segment_ids=None,
  ):
    if encoder_mask is None:
      encoder_mask = jnp.ones(encoded.shape[:2], jnp.int32)
    y = self.decoder(
      decoder_input_ids,
      encoded,
      encoder_mask,
      decoder_mask,
      deterministic,
      segment_ids,
      encoder_segment_ids,
    )
    return self.logits(y)

  def init_cache(self, encoded, max_len: int, beams: int = 1):
    return self.decoder.init_cache(encoded, max_len, beams)

  def decode_step(self, token_ids, index, cache, encoder_mask):
    """Cached decoding: token_ids (b * beams, 1) at position `index` -> (logits (b * beams,
    vocab), cache); encoder_mask (b, s) as the cache's cross K/V."""
    y, cache = self.decoder.step(token_ids, index, cache, encoder_mask)
    return self.logits(y)[:, 0], cache

  def __call__(
    self,
    input_ids,
    decoder_input_ids,
    attention_mask=None,
    decoder_attention_mask=None,
    deterministic: bool = True,
    encoder_segment_ids=None,
    decoder_segment_ids=None,
  ):
    """Teacher-forced logits (b, t, vocab), float32. Packed rows (wgqa_jax.data.pipeline) pass both
    segment ids; they replace the attention masks."""
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    encoded = self.encode(input_ids, attention_mask, deterministic, encoder_segment_ids)
    return self.decode(
      decoder_input_ids,
      encoded,
      attention_mask,
      decoder_attention_mask,
      deterministic,
      decoder_segment_ids,
      encoder_segment_ids,
    )


def shift_right(labels, decoder_start_token_id: int = 0, pad_token_id: int = 0, segment_ids=None):
  """Teacher-forcing decoder inputs from labels (HF `_shift_right`; -100 becomes pad). Packed
  rows: each example starts with its own decoder start token (T5X)."""
  shifted = jnp.concatenate(
    [jnp.full_like(labels[:, :1], decoder_start_token_id), labels[:, :-1]], axis=1
  )
  if segment_ids is not None:
    previous = jnp.concatenate([jnp.zeros_like(segment_ids[:, :1]), segment_ids[:, :-1]], axis=1)
    shifted = jnp.where(segment_ids == previous, shifted, decoder_start_token_id)
  return jnp.where(shifted == -100, pad_token_id, shifted)


def init_params(config: T5Config, rng, batch: int = 1, length: int = 8):
  """Random params (unboxed, plain arrays, per-layer layout) for `config`."""
  ids = jnp.ones((batch, length), jnp.int32)
  variables = T5(layers.plain(config)).init(rng, ids, ids)
  return nn.unbox(variables["params"])


@functools.lru_cache(maxsize=8)  # startup asks for shapes and axes many times (~1 s each at 70B)
def _abstract_variables(config: T5Config):
  ids = jnp.ones((1, 8), jnp.int32)
  return jax.eval_shape(lambda: T5(layers.plain(config)).init(jax.random.PRNGKey(0), ids, ids))


def param_shapes(config: T5Config):
  """ShapeDtypeStructs of every param, without allocating anything."""
  return nn.unbox(_abstract_variables(config)["params"])


def param_axes(config: T5Config):
  """The logical axis names of every param, as a pytree of PartitionSpecs."""
  return nn.get_partition_spec(_abstract_variables(config))["params"]
