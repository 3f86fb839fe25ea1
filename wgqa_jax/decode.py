"""KV-cached decoding with HF `generate()` semantics: greedy, sampling, and beam search.

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

from wgqa_jax import beams, generation
from wgqa_jax.generation import GenerationConfig
from wgqa_jax.models.t5 import T5
from wgqa_jax.models.t5_config import T5Config


def _encode(params, inputs, cfg):
  mask = (inputs != cfg.pad_token_id).astype(jnp.int32)
  encoded = T5(cfg).apply({"params": params}, inputs, mask, method=T5.encode)
  return encoded, mask


def cache_bytes(cfg: T5Config, batch: int, src_len: int, max_len: int) -> int:
  """Bytes of the decode cache: self K/V (max_len) + cross K/V (src_len), all decoder layers."""
  g = cfg.kv_heads_of("decoder")
  per_token = 2 * g * cfg.d_kv * jnp.dtype(cfg.dtype).itemsize
  return int(cfg.num_decoder_layers * batch * (max_len + src_len) * per_token)


@functools.partial(jax.jit, static_argnames=("cfg", "gen"))
def sample(params, inputs, cfg: T5Config, gen: GenerationConfig, rng=None):
  """Cached greedy search or sampling (gen.num_beams == 1), HF `generate()` semantics: the
  logits processed by wgqa_jax.generation, pad after EOS. inputs (b, s) 0-padded; returns
  (b * num_return_sequences, max_new_tokens), the copies of an input adjacent."""
  m = T5(cfg)
  n, max_len = gen.num_return_sequences, gen.max_new_tokens
  inputs = jnp.repeat(inputs, n, axis=0)
  encoded, mask = _encode(params, inputs, cfg)
  cache = m.apply({"params": params}, encoded, max_len, method=T5.init_cache)
  b = inputs.shape[0]
  rng = jax.random.PRNGKey(0) if rng is None else rng
  pad, eos, start = cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < max_len) & ~jnp.all(done)

  def body(state):
    i, tok, out, done, seen, cache = state
    logits, cache = m.apply({"params": params}, tok[:, None], i, cache, mask,
                            method=T5.decode_step)
    scores = generation.process_logits(logits, out, seen, i, gen, eos, start, gen.do_sample)
    if gen.do_sample:
      nxt = jax.random.categorical(jax.random.fold_in(rng, i), scores)
    else:
      nxt = jnp.argmax(scores, -1)
    nxt = jnp.where(done, pad, nxt).astype(jnp.int32)
    out = jax.lax.dynamic_update_index_in_dim(out, nxt, i, axis=1)
    return i + 1, nxt, out, done | (nxt == eos), generation.mark_seen(seen, nxt), cache

  seen = generation.seen_at_start(gen, start, b, cfg.vocab_size)
  state = (jnp.int32(0), jnp.full((b,), start, jnp.int32), jnp.full((b, max_len), pad, jnp.int32),
           jnp.zeros((b,), bool), seen, cache)
  return jax.lax.while_loop(cond, body, state)[2]


def greedy(params, inputs, cfg: T5Config, max_len: int):
  return sample(params, inputs, cfg, GenerationConfig(max_new_tokens=max_len))


def generate(params, inputs, cfg: T5Config, gen: GenerationConfig, rng=None):
  """Greedy, sampling or beam search as `gen` says: (b * num_return_sequences, max_new_tokens)."""
  if gen.num_beams > 1:
    return beam_search(params, inputs, cfg, gen)
  return sample(params, inputs, cfg, gen, rng)


@functools.partial(jax.jit, static_argnames=("cfg", "gen"))
def beam_search(params, inputs, cfg: T5Config, gen: GenerationConfig):
  """Beam search as HF `generate()` (wgqa_jax.beams): the num_return_sequences best finished
  hypotheses per input, best first: (b * num_return_sequences, max_new_tokens)."""
  m = T5(cfg)
  k, start = gen.num_beams, cfg.decoder_start_token_id
  encoded, mask = _encode(params, inputs, cfg)
  b = inputs.shape[0]
  # self-attention caches for b * k beams (beam-major per item); cross K/V once per item
  cache = m.apply({"params": params}, encoded, gen.max_new_tokens, k, method=T5.init_cache)

  def step(tokens, i, cache):
    return m.apply({"params": params}, tokens[:, None], i, cache, mask, method=T5.decode_step)

  def reorder(cache, rows):
    # beams move only within their item, whose beams share one encoder output: the cross K/V
    # stay where they are and only the self-attention cache follows the beams
    return [{**c, "self_k": c["self_k"][rows], "self_v": c["self_v"][rows]} for c in cache]

  return beams.search(step, cache, reorder, jnp.full((b * k,), start, jnp.int32), start, b, gen,
                      cfg.eos_token_id, cfg.pad_token_id, cfg.vocab_size)


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
