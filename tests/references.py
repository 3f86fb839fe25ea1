"""Independent references the library is held to: greedy search that re-runs the decoder over
the whole prefix at every step (no cache), WGQA's weighted sum of heads in plain numpy, and
span corruption undone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wgqa_jax.models.t5 import T5, T5Config


@functools.partial(jax.jit, static_argnames=("cfg", "max_len"))
def greedy_uncached(params, inputs, cfg: T5Config, max_len: int):
  """Reference greedy decoding of a T5 that re-runs the decoder over the whole prefix every
  step."""
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


def ref_weighted_sum(kernel, w, g):
  d, h, dk = kernel.shape
  size = h // g
  out = np.zeros((d, g, dk), np.float64)
  for head in range(h):
    out[:, head // size] += kernel[:, head] * w[head]  # w[head] is a scalar or a (dk,) row
  return out


def uncorrupt(inputs, targets, first_sentinel: int, num_sentinels: int, eos_id: int) -> list[int]:
  """The raw tokens back from (inputs, targets): each input sentinel replaced by the span the
  targets give after the same sentinel. The inverse of wgqa_jax.data.span_corruption.corrupt."""
  is_sentinel = lambda t: first_sentinel - num_sentinels < t <= first_sentinel
  spans, current = {}, None
  for t in targets:
    t = int(t)
    if t == eos_id:
      break
    if is_sentinel(t):
      current = spans.setdefault(t, [])
    elif current is not None:
      current.append(t)
  out = []
  for t in inputs:
    t = int(t)
    if t == eos_id:
      break
    out.extend(spans.get(t, []) if is_sentinel(t) else [t])
  return out
