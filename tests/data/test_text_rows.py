"""Rows of documents for the pretraining objectives (wgqa_jax.data.text_rows) and the pipeline that
makes them: nothing lost, nothing crossing a document, resumable, split over processes."""

import jax
import numpy as np
import pytest
from references import uncorrupt

from wgqa_jax import models
from wgqa_jax.data import pipeline, text_rows, tokenizers
from wgqa_jax.models import llama
from wgqa_jax.training import objectives

EOS, PAD = 1, 0


def documents(lengths, seed=0, low=3, high=400):
  rng = np.random.default_rng(seed)
  return [rng.integers(low, high, n).astype(np.int32) for n in lengths]


def test_span_rows_are_t5_shaped_and_give_back_every_token_in_order():
  docs = documents([50, 900, 3, 700, 1200, 40])
  make = text_rows.SpanCorruptionRows(512, 114, first_sentinel=499, eos_id=EOS, pad_id=PAD)
  assert make.tokens_length == 568
  rows = make.random_map(docs, np.random.default_rng(0))
  stream = np.concatenate(docs).tolist()
  n = -(-len(stream) // 568)
  assert rows["inputs"].shape == (n, 512) and rows["targets"].shape == (n, 114)
  chunks = [uncorrupt(i, t, 499, 100, EOS) for i, t in zip(rows["inputs"], rows["targets"])]
  # every full row fills its 512 inputs and 114 targets exactly (EOS last, no padding)
  full = [r for r, c in enumerate(chunks) if len(c) == 568]
  assert len(full) == n - 1
  assert (rows["inputs"][full] != PAD).all() and (rows["targets"][full] != PAD).all()
  assert (rows["inputs"][full, -1] == EOS).all() and (rows["targets"][full, -1] == EOS).all()
  # the rows are the stream's chunks, shuffled: put back in order they are the stream
  by_start = sorted(
    chunks, key=lambda c: next(s for s in range(0, len(stream), 568) if stream[s : s + len(c)] == c)
  )
  assert sum(by_start, []) == stream


def test_span_rows_are_a_function_of_the_rng():
  docs = documents([300, 500])
  make = text_rows.SpanCorruptionRows(128, 32, first_sentinel=499, eos_id=EOS, pad_id=PAD)
  a, b = (make.random_map(docs, np.random.default_rng(7)) for _ in range(2))
  c = make.random_map(docs, np.random.default_rng(8))
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["inputs"], c["inputs"])


def reference_causal_rows(docs, length):
  """Row by row, independently: walk the documents, cut at row ends."""
  rows = []
  tokens, seg, pos = [], [], []
  for d in docs:
    start = 0
    while start < len(d):
      if len(tokens) == length:
        rows.append((tokens, seg, pos))
        tokens, seg, pos = [], [], []
      take = min(len(d) - start, length - len(tokens))
      s = (seg[-1] + 1) if seg else 1
      tokens += d[start : start + take].tolist()
      seg += [s] * take
      pos += list(range(take))
      start += take
  pad = length - len(tokens)
  rows.append((tokens + [PAD] * pad, seg + [0] * pad, pos + [0] * pad))
  return [tuple(np.asarray(x, np.int32) for x in r) for r in rows]


def test_causal_rows_match_the_reference_and_split_long_documents():
  docs = documents([5, 70, 2, 33, 64, 1, 130])  # several longer than a row of 32
  make = text_rows.CausalLMRows(32, PAD, cross_documents=False)
  rows = make.random_map(docs, np.random.default_rng(0))
  ref = reference_causal_rows(docs, 32)
  got = sorted(
    zip(rows["tokens"], rows["segment_ids"], rows["positions"]),
    key=lambda r: next(i for i, x in enumerate(ref) if np.array_equal(x[0], r[0])),
  )
  assert len(got) == len(ref) == -(-sum(map(len, docs)) // 32)
  for (t, s, p), (rt, rs, rp) in zip(got, ref):
    np.testing.assert_array_equal(t, rt)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(p, rp)


def test_causal_rows_across_documents_are_one_segment():
  docs = documents([5, 40, 9])
  rows = text_rows.CausalLMRows(16, PAD, cross_documents=True).random_map(
    docs, np.random.default_rng(0)
  )
  stream = np.concatenate(docs)
  full = rows["segment_ids"].min(axis=1) == 1
  assert full.sum() == len(stream) // 16
  assert (rows["positions"][full] == np.arange(16)).all()
  assert sorted(rows["tokens"][full].tolist()) == sorted(
    stream[: len(stream) // 16 * 16].reshape(-1, 16).tolist()
  )


def test_causal_loss_on_a_packed_row_is_the_sum_of_each_documents_own_loss():
  """Segment ids keep attention and the next-token loss inside each document: the loss of a
  row holding pieces of three documents equals the losses of the three pieces alone."""
  cfg = models.preset("llama-tiny").replace(vocab_size=64)
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  docs = documents([7, 12, 9], low=3, high=64)
  packed = text_rows.causal_rows(
    np.concatenate(docs), np.repeat(np.arange(3), [7, 12, 9]), 28, PAD, cross_documents=False
  )
  loss = lambda rows: float(objectives.loss_sums(params, rows, None, cfg, 0.0, 0.0, False)[0])
  alone = [text_rows.causal_rows(d, np.zeros(len(d), np.int64), 28, PAD, False) for d in docs]
  np.testing.assert_allclose(loss(packed), sum(loss(a) for a in alone), rtol=1e-5)
  crossing = text_rows.causal_rows(np.concatenate(docs), np.zeros(28, np.int64), 28, PAD, True)
  assert abs(loss(crossing) - loss(packed)) > 1e-3  # with crossing, it is another loss


class WordTokenizer:
  """Each document is one id per word: tokens are traceable back to their document."""

  pad_id, eos_id, prefix, vocab_size, extra_ids = PAD, EOS, (2,), 1000, 100

  def encode(self, text):
    return [int(w) for w in text.split()]


def corpus(n=40, seed=0):
  rng = np.random.default_rng(seed)
  # document k's words are 100 + 10 k + j (j < 10): any word names its document
  return [" ".join(str(100 + 10 * k + j) for j in range(rng.integers(1, 10))) for k in range(n)]


def doc_of(ids) -> set:
  return {(int(t) - 100) // 10 for t in np.ravel(ids) if t >= 100}


@pytest.mark.parametrize("objective", ["causal_lm", "span_corruption"])
def test_text_batches_resume_mid_window_exactly(objective):
  docs = corpus()
  layout = pipeline.Layout(3, 16, 8, pack_window=8, seed=3, objective=objective)
  it = pipeline.TrainBatches(docs, WordTokenizer(), layout)
  positions, batches = [], []
  for _ in range(12):
    positions.append(it.position)
    batches.append(next(it))
  assert any(row for _, row in positions)
  for i in (2, 5, 9):
    again = pipeline.TrainBatches(docs, WordTokenizer(), layout, position=positions[i])
    for b in batches[i : i + 3]:
      got = next(again)
      assert all(np.array_equal(got[k], b[k]) for k in b)


def test_processes_read_disjoint_documents_that_cover_an_epoch():
  docs = corpus(64)
  layout = pipeline.Layout(4, 12, 4, pack_window=8, objective="causal_lm")
  seen = []
  for p in range(2):
    ds = pipeline.windows(docs, WordTokenizer(), layout, process_index=p, process_count=2)
    seen.append(set().union(*(doc_of(ds[k]["tokens"]) for k in range(4))))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(64))


def test_eval_rows_are_fixed_and_their_last_batch_is_padding():
  docs = corpus(20)
  layout = pipeline.Layout(4, 12, 4, pack_window=8, objective="causal_lm")
  a = pipeline.eval_rows(docs, WordTokenizer(), layout, 20)
  b = pipeline.eval_rows(docs, WordTokenizer(), layout, 20)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  batches = list(pipeline.eval_row_batches(a, 5, PAD))
  n = len(a["tokens"])
  assert len(batches) == -(-n // 5)
  assert (batches[-1]["segment_ids"][n % 5 or 5 :] == 0).all()
  # a bound on the rows keeps the first of them, whatever the documents' sizes
  capped = pipeline.eval_rows(docs, WordTokenizer(), layout, 20, max_rows=3)
  assert all(np.array_equal(capped[k], a[k][:3]) for k in a) and n > 3
  huge = [" ".join(str(100 + i % 9) for i in range(20_000))] + list(docs)
  assert len(pipeline.eval_rows(huge, WordTokenizer(), layout, 20, max_rows=7)["tokens"]) == 7


def test_rows_per_example_counts_documents_of_a_window():
  docs = corpus(10)
  layout = pipeline.Layout(4, 12, 4, pack_window=16, objective="causal_lm")
  rows = len(pipeline.windows(docs, WordTokenizer(), layout)[0]["tokens"])
  assert pipeline.rows_per_example(docs, WordTokenizer(), layout) == pytest.approx(rows / 16)


def test_span_corruption_needs_a_tokenizer_with_sentinels():
  with pytest.raises(ValueError, match="no sentinel ids"):
    tokenizers.sentinels(tokenizers.ByteTokenizer())
  assert tokenizers.sentinels(WordTokenizer()) == (999, 100)
