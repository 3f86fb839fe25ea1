"""Greedy decoding (reference implementation: recomputes the decoder over a fixed-length buffer).

Encoder runs once; at step i the decoder sees tokens [0, i] and we take the argmax at position i.
Jitted with a fixed max length, so it compiles once per (batch, input length, max_len).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from wgqa_jax.config import T5Config
from wgqa_jax.model import T5


@functools.partial(jax.jit, static_argnames=("cfg", "max_len"))
def greedy_uncached(params, inputs, cfg: T5Config, max_len: int):
  """inputs (b, s) 0-padded -> (b, max_len) generated ids (pad after EOS)."""
  m = T5(cfg)
  mask = (inputs != cfg.pad_token_id).astype(jnp.int32)
  encoded = m.apply({"params": params}, inputs, mask, method=T5.encode)
  b = inputs.shape[0]
  buf = jnp.full((b, max_len + 1), cfg.pad_token_id, jnp.int32)
  buf = buf.at[:, 0].set(cfg.decoder_start_token_id)
  done = jnp.zeros((b,), bool)

  def step(i, carry):
    buf, done = carry
    logits = m.apply({"params": params}, buf[:, :-1], encoded, mask, method=T5.decode)
    tok = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), -1)
    tok = jnp.where(done, cfg.pad_token_id, tok).astype(jnp.int32)
    buf = jax.lax.dynamic_update_index_in_dim(buf, tok, i + 1, axis=1)
    return buf, done | (tok == cfg.eos_token_id)

  buf, _ = jax.lax.fori_loop(0, max_len, step, (buf, done))
  return buf[:, 1:]
