"""KV-cached decoding: greedy, temperature / top-k sampling, and beam search.

The encoder runs once. Each decoder layer's cross-attention K/V are computed once from the
encoder output and cached with G heads, and the self-attention cache is (batch, max_len, G, d_kv)
updated in place at each step: with GQA the cache is G/H of MHA's, which is the point.
Everything is jitted with a fixed max_len; loops stop early once every sequence has ended.

Outputs are (batch, max_len) token ids without the decoder start token, pad after EOS.
`greedy_uncached` recomputes the whole prefix each step: the reference the tests hold the cached
path to.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wgqa_jax.models.t5 import T5
from wgqa_jax.models.t5_config import T5Config


def _encode(params, inputs, cfg):
  mask = (inputs != cfg.pad_token_id).astype(jnp.int32)
  encoded = T5(cfg).apply({"params": params}, inputs, mask, method=T5.encode)
  return encoded, mask


def cache_bytes(cfg: T5Config, batch: int, src_len: int, max_len: int) -> int:
  """Bytes of the decode cache: self K/V (max_len) + cross K/V (src_len), all decoder layers."""
  g = cfg.grouping_of("decoder").num_kv_heads(cfg.num_heads)
  per_token = 2 * g * cfg.d_kv * jnp.dtype(cfg.dtype).itemsize
  return int(cfg.num_decoder_layers * batch * (max_len + src_len) * per_token)


@functools.partial(jax.jit, static_argnames=("cfg", "max_len", "top_k"))
def sample(params, inputs, cfg: T5Config, max_len: int, rng=None, temperature: float = 0.0,
           top_k: int = 0):
  """Cached greedy (temperature 0) or sampled decoding. inputs (b, s) 0-padded."""
  m = T5(cfg)
  encoded, mask = _encode(params, inputs, cfg)
  cache = m.apply({"params": params}, encoded, max_len, method=T5.init_cache)
  b = inputs.shape[0]
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def cond(state):
    i, _, _, done, _ = state
    return (i < max_len) & ~jnp.all(done)

  def body(state):
    i, tok, out, done, cache = state
    logits, cache = m.apply({"params": params}, tok[:, None], i, cache, mask,
                            method=T5.decode_step)
    if top_k > 0:
      kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    sampled = jax.random.categorical(jax.random.fold_in(rng, i),
                                     logits / jnp.maximum(temperature, 1e-6))
    nxt = jnp.where(temperature > 0, sampled, jnp.argmax(logits, -1)).astype(jnp.int32)
    nxt = jnp.where(done, cfg.pad_token_id, nxt)
    out = jax.lax.dynamic_update_index_in_dim(out, nxt, i, axis=1)
    return i + 1, nxt, out, done | (nxt == cfg.eos_token_id), cache

  state = (jnp.int32(0), jnp.full((b,), cfg.decoder_start_token_id, jnp.int32),
           jnp.full((b, max_len), cfg.pad_token_id, jnp.int32), jnp.zeros((b,), bool), cache)
  return jax.lax.while_loop(cond, body, state)[2]


def greedy(params, inputs, cfg: T5Config, max_len: int):
  return sample(params, inputs, cfg, max_len)


@functools.partial(jax.jit, static_argnames=("cfg", "max_len", "num_beams"))
def beam_search(params, inputs, cfg: T5Config, max_len: int, num_beams: int = 4,
                length_penalty: float = 1.0):
  """Beam search; a finished hypothesis scores sum(log p) / (generated length ** length_penalty)
  as in HF generate (the length counts the EOS). Returns the best (b, max_len) sequences."""
  m = T5(cfg)
  k, neg = num_beams, jnp.float32(-1e9)
  encoded, mask = _encode(params, inputs, cfg)
  b = inputs.shape[0]
  rep = lambda x: jnp.repeat(x, k, axis=0)  # (b, ...) -> (b * k, ...), beam-major per item
  cache = m.apply({"params": params}, rep(encoded), max_len, method=T5.init_cache)
  mask = rep(mask)

  def norm(i):  # length penalty for a hypothesis of i generated tokens
    return jnp.power(jnp.float32(i), length_penalty)

  def cond(s):
    i, _, alive_lp, _, fin_score, cache = s
    # alive beams can only lose log-probability: stop when none can beat the worst kept finished.
    best_possible = alive_lp.max(-1) / jnp.where(length_penalty > 0, norm(max_len), norm(i + 1))
    return (i < max_len) & ~jnp.all(fin_score.min(-1) >= best_possible)

  def body(s):
    i, seqs, alive_lp, fin_seqs, fin_score, cache = s
    last = jnp.where(i == 0, cfg.decoder_start_token_id,
                     jax.lax.dynamic_index_in_dim(seqs, jnp.maximum(i - 1, 0), 2, False))
    logits, cache = m.apply({"params": params}, last.reshape(b * k, 1), i, cache, mask,
                            method=T5.decode_step)
    v = logits.shape[-1]
    cand = (alive_lp[..., None] + jax.nn.log_softmax(logits).reshape(b, k, v)).reshape(b, k * v)
    top_lp, top_idx = jax.lax.top_k(cand, 2 * k)                     # (b, 2k)
    beam, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
    cand_seqs = jnp.take_along_axis(seqs, beam[..., None], axis=1)   # (b, 2k, L)
    cand_seqs = jax.lax.dynamic_update_index_in_dim(cand_seqs, tok, i, axis=2)
    is_eos = tok == cfg.eos_token_id
    # finished: merge the EOS candidates into the k best finished hypotheses
    new_fin = jnp.where(is_eos, top_lp / norm(i + 1), neg)
    all_score = jnp.concatenate([fin_score, new_fin], 1)
    all_seqs = jnp.concatenate([fin_seqs, cand_seqs], 1)
    fin_score, keep = jax.lax.top_k(all_score, k)
    fin_seqs = jnp.take_along_axis(all_seqs, keep[..., None], axis=1)
    # alive: the k best candidates that did not end
    alive_lp, keep = jax.lax.top_k(jnp.where(is_eos, neg, top_lp), k)
    seqs = jnp.take_along_axis(cand_seqs, keep[..., None], axis=1)
    src = (jnp.take_along_axis(beam, keep, 1) + jnp.arange(b)[:, None] * k).reshape(-1)
    cache = jax.tree.map(lambda x: x[src], cache)
    return i + 1, seqs, alive_lp, fin_seqs, fin_score, cache

  pad = cfg.pad_token_id
  init = (jnp.int32(0), jnp.full((b, k, max_len), pad, jnp.int32),
          jnp.concatenate([jnp.zeros((b, 1)), jnp.full((b, k - 1), neg)], 1),
          jnp.full((b, k, max_len), pad, jnp.int32), jnp.full((b, k), neg), cache)
  i, seqs, alive_lp, fin_seqs, fin_score, _ = jax.lax.while_loop(cond, body, init)
  # items with no finished hypothesis fall back to their best alive beam
  alive_score = alive_lp / norm(i)
  all_score = jnp.concatenate([fin_score, alive_score], 1)
  all_seqs = jnp.concatenate([fin_seqs, seqs], 1)
  best = jnp.argmax(all_score, axis=1)
  return jnp.take_along_axis(all_seqs, best[:, None, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("cfg", "max_len"))
def greedy_uncached(params, inputs, cfg: T5Config, max_len: int):
  """Reference greedy decoding that re-runs the decoder over the whole prefix every step."""
  m = T5(cfg)
  encoded, mask = _encode(params, inputs, cfg)
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


def strip(ids, eos_id: int = 1) -> list[list[int]]:
  """Rows of ids up to and including the first EOS (pad removed)."""
  out = []
  for row in np.asarray(ids).tolist():
    out.append(row[:row.index(eos_id) + 1] if eos_id in row else row)
  return out
