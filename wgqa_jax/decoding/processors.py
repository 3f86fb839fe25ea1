"""Logits processors with Hugging Face `generate()` semantics, applied in HF's order by
`process_logits`: repetition penalty, no-repeat n-grams, min length, min new tokens, then
(sampling only) temperature, top-k, top-p. Jitted inside the search loops.

As in HF, the ids before the generated ones (`prefix`) are the decoder's prompt: the start token
of an encoder-decoder, the (left-padded) prompt of a decoder-only model. `min_length` counts
them, and the repetition penalty and the n-gram blocking see them too (pads included, as HF's
processors read input_ids).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wgqa_jax.decoding.settings import GenerationConfig

NEG_INF = -jnp.inf


def prefix_ids(prefix, rows: int):
  """The decoder's ids before the generated ones as (rows, P): a start id (int) or an array."""
  prefix = jnp.asarray(prefix, jnp.int32)
  return jnp.full((rows, 1), prefix, jnp.int32) if prefix.ndim == 0 else prefix


def banned_ngrams(tokens, i, n: int, prefix, vocab: int):
  """(rows, V) True where a token would complete an n-gram that already occurs in the decoder
  ids [prefix, tokens[:i]] (HF NoRepeatNGramLogitsProcessor). tokens (rows, L); i traced;
  prefix: the start id, or (rows, P) prompt ids."""
  rows, length = tokens.shape
  full = jnp.concatenate([prefix_ids(prefix, rows), tokens.astype(jnp.int32)], 1)
  known = full.shape[1] - length + i  # ids so far: the prefix and i generated
  windows = full.shape[1] + 1 - n  # n-grams that fit in the buffer
  if windows <= 0:
    return jnp.zeros((rows, vocab), bool)
  if n == 1:  # every id seen so far is banned
    match = jnp.ones((rows, windows), bool)
  else:
    grams = jnp.stack([full[:, k : k + windows] for k in range(n - 1)], -1)  # (rows, J, n-1)
    last = jax.lax.dynamic_slice_in_dim(full, jnp.maximum(known + 1 - n, 0), n - 1, axis=1)
    match = jnp.all(grams == last[:, None, :], -1)
  # an n-gram j counts once all its n ids are known: its last id j + n - 1 < known
  match &= (jnp.arange(windows) + n - 1 < known)[None, :] & (known + 1 >= n)
  nxt = full[:, n - 1 : n - 1 + windows]
  hit = (
    jnp.zeros((rows, vocab), jnp.int32)
    .at[jnp.arange(rows)[:, None], nxt]
    .max(match.astype(jnp.int32))
  )
  return hit > 0


def process_logits(
  scores, tokens, seen, i, gen: GenerationConfig, eos_id: int, prefix, sampling: bool
):
  """scores (rows, V) float32 (logits; log-probs in beam search, as HF); tokens (rows, L) the
  generated ids (the first i valid); seen (rows, V) ids in [prefix, tokens[:i]]; i: tokens
  generated so far (traced); prefix: the start id, or (rows, P) prompt ids."""
  if gen.repetition_penalty != 1.0:
    p = gen.repetition_penalty
    scores = jnp.where(seen, jnp.where(scores < 0, scores * p, scores / p), scores)
  if gen.no_repeat_ngram_size > 0:
    scores = jnp.where(
      banned_ngrams(tokens, i, gen.no_repeat_ngram_size, prefix, scores.shape[-1]), NEG_INF, scores
    )
  # HF counts the prefix in min_length (the current length is P + i); min_new_tokens, when set,
  # replaces min_length (HF sets min_length = min_new_tokens + prompt length)
  if gen.min_length > 0 and gen.min_new_tokens == 0:
    length = prefix_ids(prefix, scores.shape[0]).shape[1] + i
    scores = scores.at[:, eos_id].set(
      jnp.where(length < gen.min_length, NEG_INF, scores[:, eos_id])
    )
  if gen.min_new_tokens > 0:
    scores = scores.at[:, eos_id].set(jnp.where(i < gen.min_new_tokens, NEG_INF, scores[:, eos_id]))
  if sampling:
    if gen.temperature != 1.0:
      scores = scores / gen.temperature
    if gen.top_k > 0:
      k = min(gen.top_k, scores.shape[-1])
      kth = jax.lax.top_k(scores, k)[0][:, -1:]
      scores = jnp.where(scores < kth, NEG_INF, scores)
    if gen.top_p < 1.0:
      # HF: sort ascending, drop tokens whose cumulative probability is <= 1 - top_p; keep 1.
      order = jnp.argsort(scores, axis=-1)
      sorted_scores = jnp.take_along_axis(scores, order, -1)
      cum = jnp.cumsum(jax.nn.softmax(sorted_scores, -1), -1)
      remove_sorted = (cum <= 1 - gen.top_p).at[:, -1].set(False)
      remove = (
        jnp.zeros_like(remove_sorted)
        .at[jnp.arange(scores.shape[0])[:, None], order]
        .set(remove_sorted)
      )
      scores = jnp.where(remove, NEG_INF, scores)
  return scores


def mark_seen(seen, tokens):
  """seen (rows, V) with tokens (rows,) added."""
  return seen.at[jnp.arange(seen.shape[0]), tokens].set(True)


def seen_at_start(gen: GenerationConfig, prefix, rows: int, vocab: int):
  """Which ids the repetition penalty sees before the first new token: the prefix's (a (rows, 1)
  dummy when no penalty is asked for, so the loops carry no (rows, vocab) array for nothing)."""
  if gen.repetition_penalty == 1.0:
    return jnp.zeros((rows, 1), bool)
  ids = prefix_ids(prefix, rows)
  return jnp.zeros((rows, vocab), bool).at[jnp.arange(rows)[:, None], ids].set(True)
