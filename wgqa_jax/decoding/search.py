"""The two search loops every model family shares: greedy search / sampling, and beam search,
both with Hugging Face `generate()` semantics, over a `Decoder` (wgqa_jax.models.family) that the
model's family builds (models/t5/decoding.py, models/llama/decoding.py). Everything is jitted with a
fixed length; the loops stop early once every row has ended. After EOS a row emits pad.

Beam search is step for step transformers 4.x BeamSearchScorer and 5.x:
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

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wgqa_jax.decoding import processors
from wgqa_jax.decoding.settings import GenerationConfig
from wgqa_jax.models import family_of
from wgqa_jax.models.family import Decoder


def sample(dec: Decoder, gen: GenerationConfig, eos: int, pad: int, vocab: int, rng=None):
  """Greedy search or sampling (gen.num_beams == 1): (rows, max_new_tokens)."""
  rows, max_len = dec.first.shape[0], gen.max_new_tokens
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < max_len) & ~jnp.all(done)

  def body(state):
    i, tok, out, done, seen, cache = state
    logits, cache = dec.step(tok, i, cache)
    scores = processors.process_logits(logits, out, seen, i, gen, eos, dec.prefix, gen.do_sample)
    if gen.do_sample:
      nxt = jax.random.categorical(jax.random.fold_in(rng, i), scores)
    else:
      nxt = jnp.argmax(scores, -1)
    nxt = jnp.where(done, pad, nxt).astype(jnp.int32)
    out = jax.lax.dynamic_update_index_in_dim(out, nxt, i, axis=1)
    return i + 1, nxt, out, done | (nxt == eos), processors.mark_seen(seen, nxt), cache

  seen = processors.seen_at_start(gen, dec.prefix, rows, vocab)
  state = (
    jnp.int32(0),
    dec.first.astype(jnp.int32),
    jnp.full((rows, max_len), pad, jnp.int32),
    jnp.zeros((rows,), bool),
    seen,
    dec.cache,
  )
  return jax.lax.while_loop(cond, body, state)[2]


def beam(dec: Decoder, batch: int, gen: GenerationConfig, eos: int, pad: int, vocab: int):
  """The num_return_sequences best finished hypotheses per input, best first:
  (batch * num_return_sequences, max_new_tokens). The decoder's rows are beam-major per input
  (batch * num_beams); every beam of an input starts from the same prompt."""
  step, cache, reorder, first, prefix = dec.step, dec.cache, dec.reorder, dec.first, dec.prefix
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
    last = jnp.where(
      i == 0,
      first,
      jax.lax.dynamic_index_in_dim(seqs, jnp.maximum(i - 1, 0), 2, False).reshape(b * k),
    )
    logits, cache = step(last, i, cache)
    logp = processors.process_logits(
      jax.nn.log_softmax(logits), seqs.reshape(b * k, -1), seen, i, gen, eos, prefix, sampling=False
    )
    v = logp.shape[-1]
    acc = (logp.reshape(b, k, v) + run_lp[..., None]).reshape(b, k * v)
    top_lp, top_idx = jax.lax.top_k(acc, 2 * k)  # (b, 2k), sorted
    beam, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
    cand = jax.lax.dynamic_update_index_in_dim(gather(seqs, beam), tok, i, axis=2)
    hits = (tok == eos) | (i + 1 >= max_len)  # the candidate ends
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
      seen = processors.mark_seen(seen[rows], gather(tok, keep).reshape(-1))
    # can the running beams still beat the worst finished ones? (HF's heuristic, per input)
    best_possible = run_lp[:, :1] / (norm[max_len - 1] if es == "never" and lp > 0 else norm[i])
    worst = jnp.where(is_fin, jnp.min(fin_score, 1, keepdims=True), -big)
    unsatisfied = unsatisfied & jnp.any(best_possible > worst, -1)
    return i + 1, new_seqs, run_lp, fin_seqs, fin_score, is_fin, unsatisfied, hits, seen, cache

  fill = jnp.full((b, k, max_len), pad, jnp.int32)
  run_lp = jnp.concatenate([jnp.zeros((b, 1)), jnp.full((b, k - 1), -big)], 1)
  init = (
    jnp.int32(0),
    fill,
    run_lp,
    fill,
    jnp.full((b, k), -big),
    jnp.zeros((b, k), bool),
    jnp.ones((b,), bool),
    jnp.zeros((b, 2 * k), bool),
    processors.seen_at_start(gen, prefix, b * k, vocab),
    cache,
  )
  fin_seqs = jax.lax.while_loop(cond, body, init)[3]
  out = fin_seqs[:, :n_ret].reshape(b * n_ret, max_len)
  # HF fills after EOS with EOS (its pad 0 is falsy there); we pad, as greedy does
  after_eos = jnp.cumsum(out == eos, axis=1) - (out == eos) > 0
  return jnp.where(after_eos, pad, out)


# ----------------------------------------------------------------------------------------------
# generate: the family's Decoder, then the loop `gen` asks for
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("cfg", "gen"))
def generate(params, cfg, inputs, gen: GenerationConfig, rng=None, attention_mask=None):
  """Greedy search, sampling or beam search as `gen` says, with HF `generate()` semantics:
  (b * num_return_sequences, max_new_tokens) new tokens, the copies of an input adjacent (beam
  search: best first), pad after EOS.

  inputs (b, s): T5: the encoder's ids (0-padded; attention_mask, if given, says which are
  real). Decoder-only: left-padded prompts with their attention_mask, HF's layout; without a
  mask, the pipeline's right-padded input rows, prompted as they were trained
  (wgqa_jax.models.llama.causal_view)."""
  beams = gen.num_beams > 1
  copies = gen.num_beams if beams else gen.num_return_sequences
  dec = family_of(cfg).begin_decoding(
    params, cfg, inputs, attention_mask, copies, gen.max_new_tokens
  )
  eos, pad, vocab = cfg.eos_token_id, cfg.pad_token_id, cfg.vocab_size
  if beams:
    return beam(dec, inputs.shape[0], gen, eos, pad, vocab)
  return sample(dec, gen, eos, pad, vocab, rng)
