"""Tasks, tokenizers and the grain input pipeline, read through the real readers: TFDS datasets
are built here by the real TFDS builders (wgqa_jax.local_tfds, array_record) and opened with
tfds.data_source, as a run opens them."""
import pickle

import numpy as np
import pytest

from wgqa_jax import data, local_tfds, metrics, pipeline, tokenizers

SMALL = {"train": 120, "validation": 10, "test": 10}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  for name in local_tfds.SHAPES:
    local_tfds.build(name, d, SMALL)
  return d


def test_byte_tokenizer_round_trip():
  tok = tokenizers.ByteTokenizer()
  text = "summarize: Grüße, 東京!"
  ids = tok.encode(text)
  assert min(ids) >= 3 and tok.decode(ids + [tokenizers.EOS, 50]) == text


def test_sentencepiece_trained_on_the_fly_is_cached_and_pickles(tmp_path):
  pairs = data.synthetic_summarize(500, seed=0)
  texts = [t for p in pairs for t in p]
  tok = tokenizers.get_tokenizer("sentencepiece", str(tmp_path), texts, vocab_size=256)
  assert (tmp_path / "spm.model").exists()
  ids = tok.encode(pairs[3][1])
  assert tok.decode(ids + [tokenizers.EOS, 7]) == pairs[3][1]
  again = tokenizers.get_tokenizer("sentencepiece", str(tmp_path), None, vocab_size=256)
  assert again.encode(pairs[3][0]) == tok.encode(pairs[3][0])
  copy = pickle.loads(pickle.dumps(tok))  # what a grain worker process gets
  assert copy.encode(pairs[7][0]) == tok.encode(pairs[7][0]) and copy.vocab_size == tok.vocab_size


def test_long_texts_are_cut_into_pieces_sentencepiece_keeps():
  sentence = "Ka to mi ra ne lo su vi de po an el. "
  text = sentence * 400  # ~15 KB: sentencepiece would skip it whole
  pieces = tokenizers.sentence_pieces(text)
  assert len(pieces) > 3
  assert all(len(p.encode()) < tokenizers.SPM_MAX_SENTENCE_BYTES for p in pieces)
  assert " ".join(pieces).split() == text.split()
  one_word = "x" * 20000
  assert "".join(tokenizers.sentence_pieces(one_word)) == one_word


def test_tokenizer_sample_is_bounded_and_spread_over_the_split():
  pairs = [(f"doc {i} " + "w" * 1000, f"sum {i}") for i in range(10_000)]
  texts = list(data.tokenizer_sample(pairs, max_chars=50_000, max_examples=1000))
  assert sum(map(len, texts)) < 50_000 + 1100
  firsts = [int(t.split()[1]) for t in texts[::2]]
  assert firsts[:3] == [0, 10, 20]  # every 10th example, not the first 50


def test_synthetic_task_is_deterministic_and_splits_differ():
  a, b = data.synthetic_summarize(50, 0), data.synthetic_summarize(50, 0)
  assert a == b and a != data.synthetic_summarize(50, 1)
  doc, summary = a[0]
  assert doc.startswith("summarize: ") and doc[len("summarize: "):].startswith(summary)


def test_synthetic_translation_follows_its_dictionary_and_reordering():
  pairs = data.synthetic_translate(300, 0)
  assert pairs == data.synthetic_translate(300, 0) and pairs != data.synthetic_translate(300, 1)
  prefix = "translate German to English: "
  lexicon = {}
  for src, tgt in pairs:
    assert src.startswith(prefix) and src.endswith(".") and tgt.endswith(".")
    s, t = src[len(prefix):-1].split(), tgt[:-1].split()
    assert 3 <= len(s) == len(t) <= 8
    t = [t[0]] + t[2:] + [t[1]]  # undo: the source's last word went to second place
    for a, b in zip(s, t):
      assert lexicon.setdefault(a, b) == b  # one fixed translation per word
  assert len(set(lexicon.values())) == len(lexicon) > 140  # one-to-one, 150 words
  valid = data.load_examples("synthetic_translate", "validation", 20)
  assert valid == data.synthetic_translate(20, 1) and data.is_translation("synthetic_translate")


# ------------------------------------------------------------------- TFDS, real reader ----
@pytest.mark.parametrize("dataset", sorted(local_tfds.SHAPES))
def test_tfds_splits_are_read_with_their_fields_and_prefix(tfds_dir, dataset):
  src = data.source(dataset, "validation", None, tfds_dir)
  assert type(src).__name__ == "TFDSPairs" and len(src) == SMALL["validation"]
  prefix = data.TASKS[dataset][3]
  want = set()
  for _, ex in local_tfds.examples(dataset, "validation", SMALL["validation"]):
    fields = ex.get("translation", ex)
    want.add((prefix + fields[data.TASKS[dataset][1]], fields[data.TASKS[dataset][2]]))
  assert set(src) == want  # TFDS shuffles records when it writes them: compare as sets
  assert len(data.source(dataset, "train", 7, tfds_dir)) == 7
  with pytest.raises(IndexError):
    src[len(src)]


def test_missing_tfds_data_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match="could not open TFDS 'cnn_dailymail'.*synthetic_summarize") as e:
    data.source("cnn_dailymail", "train", 3, str(tmp_path))
  assert "\n" not in str(e.value)


def test_unknown_dataset_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown dataset"):
    data.source("imagenet", "train", 10)


# ------------------------------------------------------------------- pipeline ----
def take(batches, n):
  return [next(batches) for _ in range(n)]


def test_unpacked_batches_cover_each_epoch_and_are_a_function_of_the_position():
  src = data.source("synthetic_summarize", "train", 40)
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
  src = data.source("cnn_dailymail", "train", None, tfds_dir)
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
  src = data.source("wmt14_de_en", "train", None, tfds_dir)
  spm = tokenizers.get_tokenizer("sentencepiece", tfds_dir,
                                 data.tokenizer_sample(src), vocab_size=200)
  for layout in (pipeline.Layout(4, 48, 48, seed=0),
                 pipeline.Layout(4, 48, 48, pack=True, pack_window=16, seed=0)):
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
        np.testing.assert_array_equal(rows[f"{side}_positions"][r][where],
                                      np.arange(where.sum()))
        assert np.all(np.diff(np.flatnonzero(where)) == 1)  # contiguous
        ex.append(rows[side][r][where].tolist())
      out.append(tuple(ex))
  return out


def test_packing_keeps_every_example_whole_once_and_fills_rows():
  tok = tokenizers.ByteTokenizer()
  src = data.source("synthetic_translate", "train", 200)
  examples = [pipeline.Tokenize(tok, 256, 128).map(p) for p in src]
  rows = pipeline.pack_rows(examples, 256, 128, tok.pad_id)
  assert sorted(unpack(rows)) == sorted((a.tolist(), b.tolist()) for a, b in examples)
  assert np.all((rows["inputs"] != 0) == (rows["inputs_segment_ids"] > 0))
  unpacked = pipeline.pad_rows(examples, 256, 128, tok.pad_id)
  assert len(rows["inputs"]) < len(examples) / 2
  assert pipeline.padding_fraction(rows) < 0.5 * pipeline.padding_fraction(unpacked)


def test_packed_batches_resume_from_a_mid_window_position():
  src = data.source("synthetic_translate", "train", 300)
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
    for b in batches[i:i + 3]:
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
  src = data.source("synthetic_summarize", "validation", 10)
  split = pipeline.eval_split(src, tokenizers.ByteTokenizer(), 16, 8)
  assert split.texts == list(src)
  for (s, t), row in zip(split.texts, split.inputs):
    assert row.tolist() == (tokenizers.ByteTokenizer().encode(s)[:15] + [tokenizers.EOS])
  batches = list(pipeline.eval_batches(split, 4))
  assert len(batches) == 3 and batches[-1]["valid"].tolist() == [True, True, False, False]


def test_rouge_uses_our_sentence_splitting():
  r = metrics.rouge(["the cat sat. the dog ran."], ["the cat sat. the dog ran."])
  assert r["rouge1"] == pytest.approx(100.0) and r["rougeLsum"] == pytest.approx(100.0)
  assert metrics.split_sentences("A b. C d! E") == "A b.\nC d!\nE"
  r = metrics.rouge(["completely different words"], ["the cat sat"])
  assert r["rouge1"] == 0.0


def test_rows_per_example_counts_the_window_even_when_the_split_is_smaller():
  """An epoch's length in packed rows is estimated from the first window, which the repeated
  stream fills with pack_window examples even from a 10-example split."""
  src = data.source("synthetic_translate", "train", 10)
  tok = tokenizers.ByteTokenizer()
  layout = pipeline.Layout(4, 256, 128, pack=True, pack_window=64)
  rows = len(pipeline.windows(src, tok, layout)[0]["inputs"])
  assert pipeline.rows_per_example(src, tok, layout) == pytest.approx(rows / 64)
  assert pipeline.rows_per_example(src, tok, pipeline.Layout(4, 256, 128)) == 1.0
