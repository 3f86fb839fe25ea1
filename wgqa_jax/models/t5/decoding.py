"""T5's adapter to the search loops (wgqa_jax.decoding.search): the encoder runs once per input,
each decoder layer's cross-attention K/V are computed once from its output and cached with G
heads, once per input whatever the number of beams or samples. The self-attention cache is
(rows, max_new_tokens, G, d_kv), updated in place at each step: with GQA the cache is G/H of
MHA's, which is the point. Decoding starts from the decoder start token.
"""

from __future__ import annotations

import jax.numpy as jnp

from wgqa_jax.models.attention import cache_width
from wgqa_jax.models.family import Decoder
from wgqa_jax.models.t5.config import T5Config
from wgqa_jax.models.t5.model import T5


def _encode(params, inputs, attention_mask, cfg: T5Config):
  mask = (inputs != cfg.pad_token_id) if attention_mask is None else attention_mask
  mask = mask.astype(jnp.int32)
  encoded = T5(cfg).apply({"params": params}, inputs, mask, method=T5.encode)
  return encoded, mask


def begin(params, cfg: T5Config, inputs, attention_mask, copies: int, max_new_tokens: int):
  """The Decoder of `copies` rows per encoder input (inputs (b, s), pad 0 unless a mask says)."""
  m = T5(cfg)
  encoded, mask = _encode(params, inputs, attention_mask, cfg)
  start = cfg.decoder_start_token_id
  # self-attention caches for b * copies rows (copies adjacent); cross K/V once per input
  cache = m.apply({"params": params}, encoded, max_new_tokens, copies, method=T5.init_cache)

  def step(tokens, i, cache):
    return m.apply({"params": params}, tokens[:, None], i, cache, mask, method=T5.decode_step)

  def reorder(cache, rows):
    # rows move only within their input, whose rows share one encoder output: the cross K/V
    # stay where they are and only the self-attention cache follows
    return [{**c, "self_k": c["self_k"][rows], "self_v": c["self_v"][rows]} for c in cache]

  first = jnp.full((inputs.shape[0] * copies,), start, jnp.int32)
  return Decoder(step=step, cache=cache, first=first, prefix=start, reorder=reorder)


def cache_bytes(cfg: T5Config, batch: int, src_len: int, max_len: int) -> int:
  """Bytes of the decode cache: self K/V (max_len) + cross K/V (src_len), all decoder layers
  (each module with its own G; MLA: its latent)."""
  width = lambda path: cache_width(cfg.grouping_at(path), cfg.num_heads, cfg.d_kv, False)
  numbers = sum(
    max_len * width(("decoder", f"layers_{i}", "self_attention"))
    + src_len * width(("decoder", f"layers_{i}", "cross_attention"))
    for i in range(cfg.num_decoder_layers)
  )
  return int(batch * numbers * jnp.dtype(cfg.dtype).itemsize)
