"""How a decoder-only model reads the pipeline's rows (wgqa_jax.models.llama.causal_view): the
sequences of
padded and packed rows and the generation prompts, against a python reference."""

import jax
import numpy as np
from builders import rows_of

from wgqa_jax.data import tokenizers
from wgqa_jax.models.llama import causal_view


def python_sequences(examples_by_row, length):
  """The causal view built by hand: per row, each example's input then target."""
  out = []
  for row in examples_by_row:
    tokens, pos, answer = [], [], []
    for inp, tgt in row:
      tokens += list(inp) + list(tgt)
      pos += list(range(len(inp) + len(tgt)))
      answer += [False] * len(inp) + [True] * len(tgt)
    out.append((tokens, pos, answer))
  assert all(len(t) <= length for t, _, _ in out)
  return out


def test_sequences_and_prompts_match_a_python_reference():
  examples, padded, packed = rows_of()
  by_row = [[examples[i]] for i in range(len(examples))]
  rows = []  # the packed rows' examples, from their segment ids
  for r in range(len(packed["inputs"])):
    rows.append(
      [
        (
          packed["inputs"][r][packed["inputs_segment_ids"][r] == s],
          packed["targets"][r][packed["targets_segment_ids"][r] == s],
        )
        for s in range(1, packed["inputs_segment_ids"][r].max() + 1)
      ]
    )
  for batch, want in (
    (padded, python_sequences(by_row, 256)),
    (packed, python_sequences(rows, 256)),
  ):
    got = jax.tree.map(np.asarray, causal_view.sequences(batch, tokenizers.EOS))
    for r, (tokens, pos, answer) in enumerate(want):
      n = len(tokens)
      np.testing.assert_array_equal(got["tokens"][r, :n], tokens)
      np.testing.assert_array_equal(got["positions"][r, :n], pos)
      np.testing.assert_array_equal(got["answer"][r, :n], answer)
      assert (got["segment_ids"][r, :n] > 0).all() and (got["segment_ids"][r, n:] == 0).all()
      assert not got["answer"][r, n:].any()
  # generation prompts: each input row left-padded, the mask on its tokens
  ids, mask = (np.asarray(x) for x in causal_view.prompts(padded["inputs"], tokenizers.EOS, 0))
  for r, (inp, _) in enumerate(examples):
    np.testing.assert_array_equal(ids[r, -len(inp) :], inp)
    assert (
      mask[r].sum() == len(inp) and mask[r, -len(inp) :].all() and (ids[r][mask[r] == 0] == 0).all()
    )


def test_a_pad_that_equals_eos_is_still_padding():
  """HF tokenizers without a pad token pad with EOS: the rows end at their first EOS."""
  inputs = np.array([[5, 6, 1, 1, 1], [7, 1, 1, 1, 1]], np.int32)
  targets = np.array([[8, 1, 1], [1, 1, 1]], np.int32)
  s = causal_view.sequences({"inputs": inputs, "targets": targets}, eos_id=1)
  np.testing.assert_array_equal(np.asarray(s["tokens"])[:, :5], [[5, 6, 1, 8, 1], [7, 1, 1, 1, 1]])
  np.testing.assert_array_equal(
    np.asarray(s["segment_ids"]) > 0, [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
  )
