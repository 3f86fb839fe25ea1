"""The grain input pipeline (wgqa_jax.data.pipeline) read through the real readers: batches are a
function of the position, processes read their rows of the same global batches, worker processes
equal threads, packing keeps every example whole once, and resume is exact."""

import numpy as np
import pytest

from wgqa_jax.data import pipeline, tasks, tokenizers


# ------------------------------------------------------------------- pipeline ----
def take(batches, n):
  return [next(batches) for _ in range(n)]


def test_unpacked_batches_cover_each_epoch_and_are_a_function_of_the_position():
  src = tasks.source("synthetic_summarize", "train", 40)
  tok, layout = tokenizers.ByteTokenizer(), pipeline.Layout(8, 32, 16, seed=1)
  batches = take(pipeline.TrainBatches(src, tok, layout), 10)
  assert batches[0]["inputs"].shape == (8, 32) and set(batches[0]) == {"inputs", "targets"}
  epoch = np.concatenate([b["inputs"] for b in batches[:5]])
  assert len({r.tobytes() for r in epoch}) == 40  # every example once per epoch
  again = np.concatenate([b["inputs"] for b in batches[5:]])
  assert {r.tobytes() for r in again} == {r.tobytes() for r in epoch}
  assert not np.array_equal(epoch, again)  # reshuffled epoch 2
  resumed = pipeline.TrainBatches(src, tok, layout, position=(7, 0))
  for b in batches[7:]:
    np.testing.assert_array_equal(next(resumed)["targets"], b["targets"])
  other_seed = next(pipeline.TrainBatches(src, tok, pipeline.Layout(8, 32, 16, seed=2)))
  assert not np.array_equal(other_seed["inputs"], batches[0]["inputs"])


def test_each_process_reads_its_rows_of_the_same_global_batches(tfds_dir):
  src = tasks.source("cnn_dailymail", "train", None, tfds_dir)
  tok, layout = tokenizers.ByteTokenizer(), pipeline.Layout(8, 64, 16, seed=3)
  one = take(pipeline.TrainBatches(src, tok, layout), 20)  # 160 rows: over an epoch of 120
  two = [pipeline.TrainBatches(src, tok, layout, i, 2) for i in range(2)]
  four = [pipeline.TrainBatches(src, tok, layout, i, 4) for i in range(4)]
  for b in one:
    for procs in (two, four):
      parts = [next(p) for p in procs]
      for k in b:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), b[k])


def test_worker_processes_give_the_same_batches_as_threads(tfds_dir):
  """grain worker processes (spawned; the tokenizer travels pickled) change nothing."""
  src = tasks.source("wmt14_de_en", "train", None, tfds_dir)
  spm = tokenizers.get_tokenizer(
    "sentencepiece", tfds_dir, tasks.tokenizer_sample(src), vocab_size=200
  )
  for layout in (
    pipeline.Layout(4, 48, 48, seed=0),
    pipeline.Layout(4, 48, 48, pack=True, pack_window=16, seed=0),
  ):
    threads = take(pipeline.TrainBatches(src, spm, layout, workers=0), 12)
    procs = pipeline.TrainBatches(src, spm, layout, workers=2)
    for b in threads:
      got = next(procs)
      for k in b:
        np.testing.assert_array_equal(got[k], b[k])
    procs.close()


def unpack(rows):
  """The examples of packed rows, read back through their segment ids and positions."""
  out = []
  for r in range(len(rows["inputs"])):
    for seg in range(1, rows["inputs_segment_ids"][r].max() + 1):
      ex = []
      for side in ("inputs", "targets"):
        where = rows[f"{side}_segment_ids"][r] == seg
        np.testing.assert_array_equal(rows[f"{side}_positions"][r][where], np.arange(where.sum()))
        assert np.all(np.diff(np.flatnonzero(where)) == 1)  # contiguous
        ex.append(rows[side][r][where].tolist())
      out.append(tuple(ex))
  return out


def test_packing_keeps_every_example_whole_once_and_fills_rows():
  tok = tokenizers.ByteTokenizer()
  src = tasks.source("synthetic_translate", "train", 200)
  examples = [pipeline.Tokenize(tok, 256, 128).map(p) for p in src]
  rows = pipeline.pack_rows(examples, 256, 128, tok.pad_id)
  assert sorted(unpack(rows)) == sorted((a.tolist(), b.tolist()) for a, b in examples)
  assert np.all((rows["inputs"] != 0) == (rows["inputs_segment_ids"] > 0))
  unpacked = pipeline.pad_rows(examples, 256, 128, tok.pad_id)
  assert len(rows["inputs"]) < len(examples) / 2
  assert pipeline.padding_fraction(rows) < 0.5 * pipeline.padding_fraction(unpacked)


def test_packed_batches_resume_from_a_mid_window_position():
  src = tasks.source("synthetic_translate", "train", 300)
  tok = tokenizers.ByteTokenizer()
  layout = pipeline.Layout(4, 128, 96, pack=True, pack_window=32, seed=5)
  it = pipeline.TrainBatches(src, tok, layout)
  positions, batches = [], []
  for _ in range(15):
    positions.append(it.position)
    batches.append(next(it))
  assert any(row for _, row in positions)  # some batches start inside a window
  for i in (3, 7, 12):
    again = pipeline.TrainBatches(src, tok, layout, position=positions[i])
    for b in batches[i : i + 3]:
      got = next(again)
      assert all(np.array_equal(got[k], b[k]) for k in b)


def test_resume_position_is_exact_unless_packed_rows_change_process_count():
  unpacked, packed = pipeline.Layout(8, 16, 8), pipeline.Layout(8, 16, 8, pack=True)
  saved = {"process_count": 2, "positions": [[5, 3], [4, 9]]}
  assert pipeline.resume_position(saved, 30, unpacked, 0, 4) == ((30, 0), None)
  assert pipeline.resume_position(None, 30, unpacked, 0, 1) == ((30, 0), None)
  assert pipeline.resume_position(saved, 30, packed, 1, 2) == ((4, 9), None)
  position, warning = pipeline.resume_position(saved, 30, packed, 0, 1)
  assert position == (8, 0) and "differ from the uninterrupted run" in warning


def test_eval_split_is_ordered_and_its_last_batch_padded():
  src = tasks.source("synthetic_summarize", "validation", 10)
  split = pipeline.eval_split(src, tokenizers.ByteTokenizer(), 16, 8)
  assert split.texts == list(src)
  for (s, _), row in zip(split.texts, split.inputs):
    assert row.tolist() == (tokenizers.ByteTokenizer().encode(s)[:15] + [tokenizers.EOS])
  batches = list(pipeline.eval_batches(split, 4))
  assert len(batches) == 3 and batches[-1]["valid"].tolist() == [True, True, False, False]


def test_rows_per_example_counts_the_window_even_when_the_split_is_smaller():
  """An epoch's length in packed rows is estimated from the first window, which the repeated
  stream fills with pack_window examples even from a 10-example split."""
  src = tasks.source("synthetic_translate", "train", 10)
  tok = tokenizers.ByteTokenizer()
  layout = pipeline.Layout(4, 256, 128, pack=True, pack_window=64)
  rows = len(pipeline.windows(src, tok, layout)[0]["inputs"])
  assert pipeline.rows_per_example(src, tok, layout) == pytest.approx(rows / 64)
  assert pipeline.rows_per_example(src, tok, pipeline.Layout(4, 256, 128)) == 1.0
