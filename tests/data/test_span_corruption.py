"""span_corruption against an independent numpy port of T5's published span corruption.

The reference functions below (`ref_*`) are ported line by line from
google-research/text-to-text-transfer-transformer, t5/data/preprocessors.py:
`random_spans_helper` (with extra_tokens_per_span_inputs = extra_tokens_per_span_targets = 1, as
`span_corruption` calls it), `random_spans_noise_mask` and its inner `_random_segmentation`,
`noise_span_to_unique_sentinel`, `nonnoise_span_to_unique_sentinel` and `sentinel_id` (the
vocabulary's last id). TF ops -> numpy: `to_float` is float32 and `tf.round` rounds half to even
(np.round on float32), `tf.pad` -> np.pad, `tf.math.segment_sum` / `unsorted_segment_sum` ->
np.add.at, `tf.boolean_mask` -> boolean indexing. `seqio.stateless_shuffle(x, seed)` -> one draw
`rng.permutation(x)` of a numpy Generator, the noise segmentation first and then the non-noise one
(the order of T5's seeds[0], seeds[1]); that is the one convention the reference shares with the
module. The EOS that seqio appends to both features afterwards is appended here too.

HF's numpy port (transformers, examples/flax/language-modeling/run_t5_mlm_flax.py,
`FlaxDataCollatorForT5MLM.random_spans_noise_mask`) differs: it rounds in float64 (np.round of a
Python float), has no `max(length, 2)`, shuffles in place with the global np.random, and builds
the sentinels with `create_sentinel_ids` / `filter_input_ids` (which drops id 0 tokens too).
"""

import numpy as np
import pytest
from references import uncorrupt

from wgqa_jax.data import span_corruption as sc

FIRST_SENTINEL = 32099  # HF T5: len(tokenizer) - 1 = <extra_id_0>; <extra_id_1> = 32098, ...
EOS = 1


# ---- reference: t5/data/preprocessors.py ----------------------------------------------------


def ref_random_spans_helper(
  inputs_length,
  noise_density,
  mean_noise_span_length,
  extra_tokens_per_span_inputs=1,
  extra_tokens_per_span_targets=1,
):
  def _tokens_length_to_inputs_length_targets_length(tokens_length):
    num_noise_tokens = int(round(tokens_length * noise_density))
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
    return (
      num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1,
      num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1,
    )

  tokens_length = inputs_length - 1
  while _tokens_length_to_inputs_length_targets_length(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  inputs_length, targets_length = _tokens_length_to_inputs_length_targets_length(tokens_length)
  # T5's "minor hack to get the targets length to be equal to inputs length"
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def _to_float(x):
  return np.float32(x)


def _tf_round(x):
  return np.round(x)  # half to even, in x's dtype (float32 here)


def ref_noise_counts(length, noise_density=0.15, mean_noise_span_length=3.0):
  length = max(length, 2)
  num_noise_tokens = int(_tf_round(_to_float(length) * _to_float(noise_density)))
  num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
  num_noise_spans = int(_tf_round(_to_float(num_noise_tokens) / _to_float(mean_noise_span_length)))
  num_noise_spans = max(num_noise_spans, 1)
  return num_noise_tokens, num_noise_spans


def ref_random_segmentation(num_items, num_segments, rng):
  first_in_segment = np.pad(
    rng.permutation((np.arange(num_items - 1) < num_segments - 1).astype(np.int32)), [[1, 0]]
  )
  segment_id = np.cumsum(first_in_segment)
  segment_length = np.zeros(segment_id[-1] + 1, np.int32)  # segment_sum(ones, segment_id)
  np.add.at(segment_length, segment_id, 1)
  return segment_length


def ref_random_spans_noise_mask(length, rng, noise_density=0.15, mean_noise_span_length=3.0):
  if noise_density == 0.0:
    return np.zeros(length, bool)
  orig_length = length
  length = max(length, 2)
  num_noise_tokens, num_noise_spans = ref_noise_counts(
    length, noise_density, mean_noise_span_length
  )
  num_nonnoise_tokens = length - num_noise_tokens
  noise_span_lengths = ref_random_segmentation(num_noise_tokens, num_noise_spans, rng)
  nonnoise_span_lengths = ref_random_segmentation(num_nonnoise_tokens, num_noise_spans, rng)
  interleaved_span_lengths = np.reshape(
    np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1), [num_noise_spans * 2]
  )
  span_starts = np.cumsum(interleaved_span_lengths)[:-1]
  span_start_indicator = np.zeros(length, np.int32)  # unsorted_segment_sum(ones, starts, length)
  np.add.at(span_start_indicator, span_starts, 1)
  span_num = np.cumsum(span_start_indicator)
  is_noise = np.equal(span_num % 2, 1)
  return is_noise[:orig_length]


def ref_noise_span_to_unique_sentinel(tokens, noise_mask, sentinel_id):
  prev_token_is_noise = np.pad(noise_mask[:-1], [[1, 0]])
  first_noise_tokens = np.logical_and(noise_mask, np.logical_not(prev_token_is_noise))
  subsequent_noise_tokens = np.logical_and(noise_mask, prev_token_is_noise)
  sentinel = sentinel_id + 1 - np.cumsum(first_noise_tokens.astype(tokens.dtype))
  tokens = np.where(first_noise_tokens, sentinel, tokens)
  return tokens[np.logical_not(subsequent_noise_tokens)]


def ref_nonnoise_span_to_unique_sentinel(tokens, noise_mask, sentinel_id):
  return ref_noise_span_to_unique_sentinel(tokens, np.logical_not(noise_mask), sentinel_id)


def ref_corrupt(tokens, noise_mask, sentinel_id, eos_id):
  tokens = np.asarray(tokens, np.int32)
  return (
    np.append(ref_noise_span_to_unique_sentinel(tokens, noise_mask, sentinel_id), eos_id),
    np.append(ref_nonnoise_span_to_unique_sentinel(tokens, noise_mask, sentinel_id), eos_id),
  )


# ---- helpers of the tests -------------------------------------------------------------------


def runs(mask):
  """(value, length) of each maximal run of the boolean mask."""
  edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
  bounds = np.concatenate([[0], edges, [len(mask)]])
  return [(bool(mask[a]), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def float32_tie(length, noise_density=0.15):
  """Lengths where T5's float32 round(L * density) differs from float64 round."""
  return ref_noise_counts(length, noise_density, 3.0)[0] != min(
    max(int(round(max(length, 2) * noise_density)), 1), max(length, 2) - 1
  )


def random_tokens(rng, n):
  return rng.integers(2, 32000, size=n).astype(np.int32)  # below the sentinels, never EOS / pad


def rebuild(inputs, targets, is_sentinel):
  """Raw tokens from (inputs, targets) without uncorrupt: the input's i-th non-noise segment (the
  tokens before its i-th sentinel) followed by the target's i-th noise segment (after its i-th
  sentinel)."""

  def split(seq):
    assert seq[-1] == EOS
    seq = list(seq[:-1])
    cuts = [i for i, t in enumerate(seq) if is_sentinel(t)]
    return [seq[i] for i in cuts], cuts, seq

  in_sents, in_cuts, ins = split(inputs)
  tg_sents, tg_cuts, tgs = split(targets)
  assert in_sents == tg_sents == list(range(FIRST_SENTINEL, FIRST_SENTINEL - len(in_sents), -1))
  assert in_cuts[-1] == len(ins) - 1 and tg_cuts[0] == 0  # non-noise first, noise last
  out, start = [], 0
  for k, cut in enumerate(in_cuts):
    out += ins[start:cut]
    out += tgs[tg_cuts[k] + 1 : tg_cuts[k + 1] if k + 1 < len(tg_cuts) else len(tgs)]
    start = cut + 1
  return out


# ---- 1. lengths -----------------------------------------------------------------------------


def test_helper_gives_t5_pretraining_shape():
  assert sc.random_spans_helper(512) == (568, 114)
  assert ref_random_spans_helper(512, 0.15, 3.0) == (568, 114)
  assert sc.spans_per_row(568) == 28


@pytest.mark.parametrize(
  "density,mean", [(0.15, 3.0), (0.1, 3.0), (0.3, 3.0), (0.15, 2.0), (0.25, 5.0), (0.2, 8.0)]
)
def test_helper_matches_reference(density, mean):
  """T5's helper, counted as the mask counts: the most raw tokens whose corrupted inputs fit,
  and their targets. T5's helper (float64 rounding, spans may round to none, the first length
  that does not fit ends its search) agrees except where the mask would make its rows
  overflow (190 * 0.15 is 29 noise tokens in float32) or a longer row fits."""

  def counted(t):
    noise, spans = sc._noise_counts(t, density, mean)
    return t - noise + spans + 1, noise + spans + 1

  differ = 0
  for n in range(16, 1025):
    tokens, targets = sc.random_spans_helper(n, density, mean)
    ref = ref_random_spans_helper(n, density, mean)
    assert counted(tokens)[0] <= n < counted(tokens + 1)[0] and targets == counted(tokens)[1], n
    if (tokens, targets) != ref:
      differ += 1
      # T5's rows overflow under the mask, or ours hold more raw tokens (T5 stops at the
      # first length that does not fit; a longer one may, a span fewer)
      assert counted(ref[0])[0] > n or counted(ref[0])[1] > ref[1] or tokens > ref[0], (n, ref)
  assert differ < 60  # rare: ties and tiny span counts


def test_inputs_too_short_for_one_span_are_refused():
  for n in (0, 1, 2):
    with pytest.raises(ValueError, match="span corruption needs inputs of at least 3 tokens"):
      sc.random_spans_helper(n)


def test_helper_at_density_half_trims_targets_as_t5():
  # T5 drops one raw token when noise_density == 0.5 would make targets longer than inputs.
  for n in (16, 19, 64, 511, 512):
    assert sc.random_spans_helper(n, 0.5, 3.0) == ref_random_spans_helper(n, 0.5, 3.0), n


@pytest.mark.parametrize("inputs_length", [64, 128, 256, 512, 1024, *range(3, 16), 172, 316])
def test_full_rows_fill_inputs_and_targets_exactly(inputs_length):
  """At T5's lengths every full row fills its inputs and targets exactly; where T5's helper is
  wrong for the mask (no noise below 4 tokens, float32 ties: 172, 316) every row still fits its
  inputs and makes exactly the helper's targets."""
  tokens_length, targets_length = sc.random_spans_helper(inputs_length)
  rng = np.random.default_rng(inputs_length)
  for _ in range(20):
    tokens = random_tokens(rng, tokens_length)
    inputs, targets = sc.corrupt(
      tokens, sc.random_spans_noise_mask(tokens_length, rng), FIRST_SENTINEL, EOS
    )
    assert len(targets) == targets_length
    assert len(inputs) == inputs_length if inputs_length >= 64 else len(inputs) <= inputs_length


# ---- 2. the mask equals the reference -------------------------------------------------------

MASK_LENGTHS = [*range(1, 200), *range(540, 600), 1000, 1024, 2048]


def test_noise_mask_matches_reference():
  for length in MASK_LENGTHS:
    if float32_tie(length):
      continue  # test_noise_count_rounds_in_float32_as_t5
    for seed in range(5):
      got = sc.random_spans_noise_mask(length, np.random.default_rng(seed))
      want = ref_random_spans_noise_mask(length, np.random.default_rng(seed))
      assert got.dtype == bool and got.shape == (length,)
      np.testing.assert_array_equal(got, want, err_msg=f"length={length} seed={seed}")


@pytest.mark.parametrize("density,mean", [(0.3, 2.0), (0.5, 3.0), (0.1, 5.0)])
def test_noise_mask_matches_reference_at_other_densities(density, mean):
  for length in [1, 2, 3, 7, 31, 100, 333, 568]:
    if float32_tie(length, density):
      continue
    for seed in range(3):
      np.testing.assert_array_equal(
        sc.random_spans_noise_mask(length, np.random.default_rng(seed), density, mean),
        ref_random_spans_noise_mask(length, np.random.default_rng(seed), density, mean),
        err_msg=f"length={length} seed={seed}",
      )


def test_noise_count_rounds_in_float32_as_t5():
  # T5 rounds float32(L) * float32(0.15): at L = 190 that is 28.500002 -> 29 noise tokens, where
  # float64 gives 28.5 -> 28. Short final chunks of a stream can have these lengths.
  ties = [n for n in range(1, 1000) if float32_tie(n)]
  assert ties[:4] == [190, 350, 390, 670]
  for length in ties:
    got = sc.random_spans_noise_mask(length, np.random.default_rng(0))
    want = ref_random_spans_noise_mask(length, np.random.default_rng(0))
    assert got.sum() == want.sum() == ref_noise_counts(length)[0], length


# ---- 3. mask properties from the paper ------------------------------------------------------


def test_mask_has_the_published_noise_and_span_counts():
  for length in [*range(1, 120), 568, 1000]:
    for seed in range(3):
      mask = sc.random_spans_noise_mask(length, np.random.default_rng(seed))
      spans = runs(mask)
      if length == 1:
        assert spans == [(False, 1)]
        continue
      num_noise = min(max(int(np.round(length * 0.15)), 1), length - 1)
      if not float32_tie(length):
        assert mask.sum() == num_noise, length
      assert spans[0][0] is False  # the first token is never noise
      assert spans[-1][0] is True  # and the last always is: spans end with noise
      assert all(n > 0 for _, n in spans)
      noise_spans = [n for is_noise, n in spans if is_noise]
      assert len(noise_spans) == max(int(np.round(mask.sum() / 3.0)), 1), length
      assert len(spans) == 2 * len(noise_spans)  # alternating, as many non-noise spans


# ---- 4. corrupt equals the reference sentinel replacement -----------------------------------


def test_corrupt_matches_reference():
  rng = np.random.default_rng(0)
  for length in [1, 2, 3, 5, 10, 50, 200, 568]:
    for _ in range(5):
      tokens = random_tokens(rng, length)
      mask = sc.random_spans_noise_mask(length, rng)
      got, want = (
        sc.corrupt(tokens, mask, FIRST_SENTINEL, EOS),
        ref_corrupt(tokens, mask, FIRST_SENTINEL, EOS),
      )
      for g, w in zip(got, want):
        assert g.dtype == np.int32
        np.testing.assert_array_equal(g, w)


def test_sentinels_count_down_from_extra_id_0_and_eos_ends_both():
  tokens = np.arange(100, 112, dtype=np.int32)
  mask = np.zeros(12, bool)
  mask[[2, 3, 6, 9, 10, 11]] = True
  inputs, targets = sc.corrupt(tokens, mask, FIRST_SENTINEL, EOS)
  assert inputs.tolist() == [100, 101, 32099, 104, 105, 32098, 107, 108, 32097, EOS]
  assert targets.tolist() == [32099, 102, 103, 32098, 106, 32097, 109, 110, 111, EOS]
  np.testing.assert_array_equal(inputs, ref_corrupt(tokens, mask, FIRST_SENTINEL, EOS)[0])
  np.testing.assert_array_equal(targets, ref_corrupt(tokens, mask, FIRST_SENTINEL, EOS)[1])


# ---- 5. reconstruction ----------------------------------------------------------------------


def test_uncorrupt_and_an_independent_rebuild_give_the_tokens_back():
  rng = np.random.default_rng(1)
  num_sentinels = 100
  is_sentinel = lambda t: FIRST_SENTINEL - num_sentinels < t <= FIRST_SENTINEL
  for length in [2, 3, 4, 9, 33, 190, 567, 568]:
    for _ in range(10):
      tokens = random_tokens(rng, length)
      inputs, targets = sc.corrupt(
        tokens, sc.random_spans_noise_mask(length, rng), FIRST_SENTINEL, EOS
      )
      assert uncorrupt(inputs, targets, FIRST_SENTINEL, num_sentinels, EOS) == tokens.tolist()
      assert rebuild(inputs.tolist(), targets.tolist(), is_sentinel) == tokens.tolist()


# ---- 6. statistics --------------------------------------------------------------------------


def test_noise_statistics_at_568():
  length, rows = 568, 2000
  rng = np.random.default_rng(2)
  masks = np.stack([sc.random_spans_noise_mask(length, rng) for _ in range(rows)])
  assert abs(masks.mean() - 0.15) < 0.002  # 85 / 568
  noise_spans = [n for m in masks for is_noise, n in runs(m) if is_noise]
  assert len(noise_spans) == 28 * rows
  assert abs(np.mean(noise_spans) - 3.0) < 0.05  # 85 / 28
  # Each noise segmentation is a uniform composition of 85 into 28 parts:
  # P(span = 1) = C(83, 26) / C(84, 27) = 27 / 84.
  assert abs(np.mean(np.array(noise_spans) == 1) - 27 / 84) < 0.01
  # Away from the ends every position is noise about 15% of the time.
  middle = masks[:, 50:-50].mean(axis=0)
  assert abs(middle.mean() - 0.15) < 0.005 and middle.min() > 0.11 and middle.max() < 0.19
