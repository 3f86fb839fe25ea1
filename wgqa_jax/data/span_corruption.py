"""T5's span corruption (the pretraining objective of T5 and of the GQA paper's uptraining), in
numpy, as published in t5.data.preprocessors / seqio:

  random_spans_helper      raw tokens per row so the corrupted inputs fill `inputs_length`
                           exactly (512 -> 568 raw tokens, 114 targets)
  random_spans_noise_mask  which tokens are noise: round(L * 0.15) of them, in
                           round(n_noise / 3) spans; noise and non-noise are each split into that
                           many non-empty random segments, interleaved starting with non-noise
  corrupt                  inputs: each noise span -> one sentinel; targets: each non-noise span
                           -> one sentinel (so targets list sentinel + span); EOS after both

Sentinels count down from `first_sentinel`, the vocabulary's last id (HF T5: <extra_id_0> = 32099,
<extra_id_1> = 32098, ...). seqio draws its segmentations with stateless TF shuffles; here the two
shuffles are draws of one numpy Generator (noise first), so a row is a function of its rng.
"""

from __future__ import annotations

import numpy as np

from wgqa_jax.core.errors import UserError

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def _noise_counts(length: int, noise_density: float, mean_noise_span_length: float):
  """(noise tokens, noise spans) of a row of `length` raw tokens, rounded as T5's TensorFlow code
  does: in float32, half to even (190 * 0.15 is 28.500002 in float32: 29 noise tokens)."""
  f32 = np.float32
  num_noise = int(np.round(f32(length) * f32(noise_density)))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = max(int(np.round(f32(num_noise) / f32(mean_noise_span_length))), 1)
  return num_noise, num_spans


def random_spans_helper(
  inputs_length: int,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
  """(raw tokens per row, target length) such that the corrupted inputs (non-noise tokens, one
  sentinel per span, EOS) are at most `inputs_length` long, as long as possible:
  512 -> (568, 114). Counted as the mask counts (float32 rounding, at least one noise span),
  so a row never outgrows its targets (T5's helper rounds in float64 and allows no noise:
  172 -> 38 targets where the mask makes 40)."""

  def lengths(tokens_length):  # counted as the mask counts them (at least one noise span)
    num_noise, num_spans = _noise_counts(tokens_length, noise_density, mean_noise_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  tokens_length = 2  # the least a row can be: one noise token, one kept
  if lengths(tokens_length)[0] > inputs_length:
    raise UserError(
      f"span corruption needs inputs of at least {lengths(tokens_length)[0]} tokens (one kept, "
      f"one noise span, EOS); data.max_input_length is {inputs_length}"
    )
  # the most raw tokens that fit (their count is not monotonic: a span more costs a sentinel)
  most = int(inputs_length / (1 - noise_density)) + int(mean_noise_span_length) + 3
  tokens_length = max(t for t in range(2, most) if lengths(t)[0] <= inputs_length)
  targets_length = lengths(tokens_length)[1]
  # T5's "minor hack": at density 0.5 keep the targets no longer than the inputs
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length, targets_length = tokens_length - 1, targets_length - 1
  return tokens_length, targets_length


def spans_per_row(
  tokens_length: int,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> int:
  """Noise spans in a full row: the sentinels a tokenizer must have."""
  return _noise_counts(max(tokens_length, 2), noise_density, mean_noise_span_length)[1]


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator):
  """Lengths of `num_segments` non-empty segments summing to `num_items`, uniformly at random:
  a shuffled indicator of segment starts among the num_items - 1 gaps."""
  first_in_segment = rng.permutation((np.arange(num_items - 1) < num_segments - 1).astype(np.int64))
  segment_id = np.cumsum(np.concatenate([[0], first_in_segment]))
  return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(
  length: int,
  rng: np.random.Generator,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> np.ndarray:
  """Boolean (length,) mask, True on noise tokens; the first token is never noise."""
  orig_length, length = length, max(length, 2)
  num_noise, num_spans = _noise_counts(length, noise_density, mean_noise_span_length)
  noise_lengths = _random_segmentation(num_noise, num_spans, rng)
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
  span_starts = np.cumsum(interleaved)[:-1]
  span_start_indicator = np.zeros(length, np.int64)
  span_start_indicator[span_starts] = 1
  is_noise = np.cumsum(span_start_indicator) % 2 == 1
  return is_noise[:orig_length]


def _span_to_sentinel(tokens: np.ndarray, mask: np.ndarray, first_sentinel: int) -> np.ndarray:
  """Each run of masked tokens -> one sentinel (first_sentinel, first_sentinel - 1, ...)."""
  prev = np.concatenate([[False], mask[:-1]])
  first = mask & ~prev
  sentinels = first_sentinel + 1 - np.cumsum(first)
  out = np.where(first, sentinels, tokens)
  return out[~(mask & prev)]


def corrupt(
  tokens: np.ndarray, noise_mask: np.ndarray, first_sentinel: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets), int32, each EOS-terminated: the noise spans replaced by sentinels in the
  inputs; the targets list each sentinel followed by the span it replaced."""
  tokens = np.asarray(tokens, np.int32)
  inputs = _span_to_sentinel(tokens, noise_mask, first_sentinel)
  targets = _span_to_sentinel(tokens, ~noise_mask, first_sentinel)
  eos = np.array([eos_id], np.int32)
  return (
    np.concatenate([inputs, eos]).astype(np.int32),
    np.concatenate([targets, eos]).astype(np.int32),
  )
