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

from wgqa_jax import generation
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

  seen = _seen0(gen, b, cfg.vocab_size, start)
  state = (jnp.int32(0), jnp.full((b,), start, jnp.int32), jnp.full((b, max_len), pad, jnp.int32),
           jnp.zeros((b,), bool), seen, cache)
  return jax.lax.while_loop(cond, body, state)[2]


def _seen0(gen: GenerationConfig, rows: int, vocab: int, start: int):
  """Which ids the repetition penalty sees at step 0: the start token (a (rows, 1) dummy when
  no penalty is asked for, so the loops carry no (rows, vocab) array for nothing)."""
  if gen.repetition_penalty == 1.0:
    return jnp.zeros((rows, 1), bool)
  return jnp.zeros((rows, vocab), bool).at[:, start].set(True)


def greedy(params, inputs, cfg: T5Config, max_len: int):
  return sample(params, inputs, cfg, GenerationConfig(max_new_tokens=max_len))


def generate(params, inputs, cfg: T5Config, gen: GenerationConfig, rng=None):
  """Greedy, sampling or beam search as `gen` says: (b * num_return_sequences, max_new_tokens)."""
  if gen.num_beams > 1:
    return beam_search(params, inputs, cfg, gen)
  return sample(params, inputs, cfg, gen, rng)


@functools.partial(jax.jit, static_argnames=("cfg", "gen"))
def beam_search(params, inputs, cfg: T5Config, gen: GenerationConfig):
  """Beam search step for step as HF `generate()` (transformers 4.x BeamSearchScorer and 5.x):

  - candidates: the top 2k of (beam, token) by summed log-probability (processed log-probs);
  - a candidate that ends (EOS, or the length limit) finishes a hypothesis only if it ranks
    within the top k, scored sum(log p) / generated_length ** length_penalty; the k best
    finished are kept;
  - the k best candidates that did not end run on;
  - early_stopping True: done once k hypotheses are finished; False: done when the best running
    beam, scored at the current length, cannot beat the worst finished; "never": the same bound
    at the maximum length when length_penalty > 0 (exact).
  Returns the num_return_sequences best finished hypotheses per input, best first:
  (b * num_return_sequences, max_new_tokens)."""
  m = T5(cfg)
  k, max_len, n_ret = gen.num_beams, gen.max_new_tokens, gen.num_return_sequences
  big = jnp.float32(1e9)
  eos, pad, start = cfg.eos_token_id, cfg.pad_token_id, cfg.decoder_start_token_id
  lp, es = gen.length_penalty, gen.early_stopping
  # HF divides by a Python float (float64 power, then float32): norm[j] = (j + 1) ** lp
  norm = jnp.asarray(np.arange(1, max_len + 1, dtype=np.float64) ** lp, jnp.float32)
  encoded, mask = _encode(params, inputs, cfg)
  b = inputs.shape[0]
  # self-attention caches for b * k beams (beam-major per item); cross K/V once per item
  cache = m.apply({"params": params}, encoded, max_len, k, method=T5.init_cache)
  offsets = (jnp.arange(b) * k)[:, None]

  def gather(x, idx):  # x (b, n, ...), idx (b, m) -> (b, m, ...)
    return jnp.take_along_axis(x, idx.reshape(*idx.shape, *([1] * (x.ndim - 2))), axis=1)

  def cond(s):
    i, _, _, _, _, is_fin, unsatisfied, hits, _, _ = s
    all_done = jnp.all(is_fin) if es is True else jnp.bool_(False)
    return jnp.any(unsatisfied) & ~all_done & ~jnp.all(hits)

  def body(s):
    i, seqs, run_lp, fin_seqs, fin_score, is_fin, unsatisfied, _, seen, cache = s
    last = jnp.where(i == 0, start,
                     jax.lax.dynamic_index_in_dim(seqs, jnp.maximum(i - 1, 0), 2, False))
    logits, cache = m.apply({"params": params}, last.reshape(b * k, 1), i, cache, mask,
                            method=T5.decode_step)
    logp = generation.process_logits(jax.nn.log_softmax(logits), seqs.reshape(b * k, -1), seen,
                                     i, gen, eos, start, sampling=False)
    v = logp.shape[-1]
    acc = (logp.reshape(b, k, v) + run_lp[..., None]).reshape(b, k * v)
    top_lp, top_idx = jax.lax.top_k(acc, 2 * k)                          # (b, 2k), sorted
    beam, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
    cand = jax.lax.dynamic_update_index_in_dim(gather(seqs, beam), tok, i, axis=2)
    hits = (tok == eos) | (i + 1 >= max_len)                              # the candidate ends
    # running: the k best candidates that did not end
    run_lp, keep = jax.lax.top_k(top_lp - big * hits, k)
    new_seqs, src = gather(cand, keep), gather(beam, keep)
    # finished: ending candidates within the top k, merged with the k best finished so far
    score = top_lp / norm[i]  # i + 1 tokens generated, EOS included
    if es is True:
      score -= big * jnp.all(is_fin, -1, keepdims=True)
    score -= big * ~unsatisfied[:, None]
    just = hits & (jnp.arange(2 * k) < k)[None]
    score -= big * ~just
    fin_score, pick = jax.lax.top_k(jnp.concatenate([fin_score, score], 1), k)
    fin_seqs = gather(jnp.concatenate([fin_seqs, cand], 1), pick)
    is_fin = gather(jnp.concatenate([is_fin, just], 1), pick)
    # caches and seen-token sets follow their beams
    rows = (src + offsets).reshape(-1)
    # beams move only within their item, whose beams share one encoder output: the cross K/V
    # stay where they are and only the self-attention cache follows the beams
    cache = [{**c, "self_k": c["self_k"][rows], "self_v": c["self_v"][rows]} for c in cache]
    if gen.repetition_penalty != 1.0:
      seen = generation.mark_seen(seen[rows], gather(tok, keep).reshape(-1))
    # can the running beams still beat the worst finished ones? (HF's heuristic, per item)
    best_possible = run_lp[:, :1] / (norm[max_len - 1] if es == "never" and lp > 0 else norm[i])
    worst = jnp.where(is_fin, jnp.min(fin_score, 1, keepdims=True), -big)
    unsatisfied = unsatisfied & jnp.any(best_possible > worst, -1)
    return i + 1, new_seqs, run_lp, fin_seqs, fin_score, is_fin, unsatisfied, hits, seen, cache

  fill = jnp.full((b, k, max_len), pad, jnp.int32)
  run_lp = jnp.concatenate([jnp.zeros((b, 1)), jnp.full((b, k - 1), -big)], 1)
  init = (jnp.int32(0), fill, run_lp, fill, jnp.full((b, k), -big), jnp.zeros((b, k), bool),
          jnp.ones((b,), bool), jnp.zeros((b, 2 * k), bool),
          _seen0(gen, b * k, cfg.vocab_size, start), cache)
  fin_seqs = jax.lax.while_loop(cond, body, init)[3]
  out = fin_seqs[:, :n_ret].reshape(b * n_ret, max_len)
  # HF fills after EOS with EOS (its pad 0 is falsy there); we pad, as greedy does
  after_eos = jnp.cumsum(out == eos, axis=1) - (out == eos) > 0
  return jnp.where(after_eos, pad, out)


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
