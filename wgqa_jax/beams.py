"""Beam search with HF `generate()` semantics over any KV-cached decoder (T5: wgqa_jax.decode;
decoder-only: wgqa_jax.decode_causal), step for step as transformers 4.x BeamSearchScorer and 5.x:

- candidates: the top 2k of (beam, token) by summed log-probability (processed log-probs);
- a candidate that ends (EOS, or the length limit) finishes a hypothesis only if it ranks within
  the top k, scored sum(log p) / generated_length ** length_penalty; the k best finished are kept;
- the k best candidates that did not end run on;
- early_stopping True: done once k hypotheses are finished; False: done when the best running
  beam, scored at the current length, cannot beat the worst finished; "never": the same bound at
  the maximum length when length_penalty > 0 (exact).

Lengths count generated tokens only (HF subtracts the decoder prompt: T5's start token, a
decoder-only model's prompt), so one loop serves both families.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from wgqa_jax import generation
from wgqa_jax.generation import GenerationConfig


def search(step: Callable, cache, reorder: Callable, first, prefix, batch: int,
           gen: GenerationConfig, eos: int, pad: int, vocab: int):
  """The num_return_sequences best finished hypotheses per input, best first:
  (batch * num_return_sequences, max_new_tokens), pad after EOS.

  step(tokens (batch*k,), i, cache) -> (logits (batch*k, V), cache): feeds token i of each beam
    (i = 0: `first`, then the beam's previous token); rows are beam-major per input.
  reorder(cache, rows) -> the cache whose row r is the old row rows[r].
  prefix: the decoder ids before the generated ones (a start id, or (batch*k, P) prompt ids),
    for the logits processors; every beam of an input shares it."""
  b, k, max_len, n_ret = batch, gen.num_beams, gen.max_new_tokens, gen.num_return_sequences
  big = jnp.float32(1e9)
  lp, es = gen.length_penalty, gen.early_stopping
  # HF divides by a Python float (float64 power, then float32): norm[j] = (j + 1) ** lp
  norm = jnp.asarray(np.arange(1, max_len + 1, dtype=np.float64) ** lp, jnp.float32)
  offsets = (jnp.arange(b) * k)[:, None]

  def gather(x, idx):  # x (b, n, ...), idx (b, m) -> (b, m, ...)
    return jnp.take_along_axis(x, idx.reshape(*idx.shape, *([1] * (x.ndim - 2))), axis=1)

  def cond(s):
    i, _, _, _, _, is_fin, unsatisfied, hits, _, _ = s
    all_done = jnp.all(is_fin) if es is True else jnp.bool_(False)
    return jnp.any(unsatisfied) & ~all_done & ~jnp.all(hits)

  def body(s):
    i, seqs, run_lp, fin_seqs, fin_score, is_fin, unsatisfied, _, seen, cache = s
    last = jnp.where(i == 0, first,
                     jax.lax.dynamic_index_in_dim(seqs, jnp.maximum(i - 1, 0), 2,
                                                  False).reshape(b * k))
    logits, cache = step(last, i, cache)
    logp = generation.process_logits(jax.nn.log_softmax(logits), seqs.reshape(b * k, -1), seen,
                                     i, gen, eos, prefix, sampling=False)
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
    # caches and seen-token sets follow their beams (within their input)
    rows = (src + offsets).reshape(-1)
    cache = reorder(cache, rows)
    if gen.repetition_penalty != 1.0:
      seen = generation.mark_seen(seen[rows], gather(tok, keep).reshape(-1))
    # can the running beams still beat the worst finished ones? (HF's heuristic, per input)
    best_possible = run_lp[:, :1] / (norm[max_len - 1] if es == "never" and lp > 0 else norm[i])
    worst = jnp.where(is_fin, jnp.min(fin_score, 1, keepdims=True), -big)
    unsatisfied = unsatisfied & jnp.any(best_possible > worst, -1)
    return i + 1, new_seqs, run_lp, fin_seqs, fin_score, is_fin, unsatisfied, hits, seen, cache

  fill = jnp.full((b, k, max_len), pad, jnp.int32)
  run_lp = jnp.concatenate([jnp.zeros((b, 1)), jnp.full((b, k - 1), -big)], 1)
  init = (jnp.int32(0), fill, run_lp, fill, jnp.full((b, k), -big), jnp.zeros((b, k), bool),
          jnp.ones((b,), bool), jnp.zeros((b, 2 * k), bool),
          generation.seen_at_start(gen, prefix, b * k, vocab), cache)
  fin_seqs = jax.lax.while_loop(cond, body, init)[3]
  out = fin_seqs[:, :n_ret].reshape(b * n_ret, max_len)
  # HF fills after EOS with EOS (its pad 0 is falsy there); we pad, as greedy does
  after_eos = jnp.cumsum(out == eos, axis=1) - (out == eos) > 0
  return jnp.where(after_eos, pad, out)
