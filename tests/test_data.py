"""Tokenizers, the synthetic task and the resumable batcher."""
import numpy as np
import pytest

from wgqa_jax import data, metrics


def test_byte_tokenizer_round_trip():
  tok = data.ByteTokenizer()
  text = "summarize: Grüße, 東京!"
  ids = tok.encode(text)
  assert min(ids) >= 3 and tok.decode(ids + [data.EOS, 50]) == text


def test_sentencepiece_trained_on_the_fly_is_cached(tmp_path):
  pairs = data.synthetic_summarize(500, seed=0)
  texts = [t for p in pairs for t in p]
  tok = data.get_tokenizer("sentencepiece", str(tmp_path), texts, vocab_size=256)
  assert (tmp_path / "spm.model").exists()
  ids = tok.encode(pairs[3][1])
  assert tok.decode(ids + [data.EOS, 7]) == pairs[3][1]
  again = data.get_tokenizer("sentencepiece", str(tmp_path), None, vocab_size=256)
  assert again.encode(pairs[3][0]) == tok.encode(pairs[3][0])


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


def test_batches_are_a_function_of_the_step_and_cover_each_epoch():
  pairs = data.synthetic_summarize(40, 0)
  split = data.tokenize(pairs, data.ByteTokenizer(), 32, 16)
  assert split.inputs.shape == (40, 32) and (split.inputs[:, -1] != 0).sum() > 0
  assert all(data.EOS in row for row in split.targets)
  epoch = np.concatenate([data.train_batch(split, 8, s, seed=1)["inputs"] for s in range(5)])
  assert len({r.tobytes() for r in epoch}) == 40  # every example once per epoch
  np.testing.assert_array_equal(data.train_batch(split, 8, 7, 1)["inputs"],
                                data.train_batch(split, 8, 7, 1)["inputs"])
  assert not np.array_equal(data.train_batch(split, 8, 0, 1)["inputs"],
                            data.train_batch(split, 8, 5, 1)["inputs"])  # reshuffled epoch 2
  with pytest.raises(ValueError, match="fewer than one batch"):
    data.train_batch(split, 64, 0, 1)


def test_eval_batches_pad_the_last_batch():
  split = data.tokenize(data.synthetic_summarize(10, 0), data.ByteTokenizer(), 16, 8)
  batches = list(data.eval_batches(split, 4))
  assert len(batches) == 3 and batches[-1]["valid"].tolist() == [True, True, False, False]


def test_rouge_uses_our_sentence_splitting():
  r = metrics.rouge(["the cat sat. the dog ran."], ["the cat sat. the dog ran."])
  assert r["rouge1"] == pytest.approx(100.0) and r["rougeLsum"] == pytest.approx(100.0)
  assert metrics.split_sentences("A b. C d! E") == "A b.\nC d!\nE"
  r = metrics.rouge(["completely different words"], ["the cat sat"])
  assert r["rouge1"] == 0.0


def test_unknown_dataset_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load_examples("imagenet", "train", 10)


@pytest.mark.parametrize("dataset,example,want", [
    ("cnn_dailymail", {"article": b"Some news.", "highlights": b"News."},
     ("summarize: Some news.", "News.")),
    ("multi_news", {"document": "Doc one.", "summary": "Sum."}, ("summarize: Doc one.", "Sum.")),
    ("wmt14_de_en", {"de": b"Hallo Welt", "en": b"Hello world"},
     ("translate German to English: Hallo Welt", "Hello world")),
])
def test_tfds_examples_get_fields_and_prefixes(monkeypatch, dataset, example, want):
  import tensorflow_datasets as tfds
  calls = []
  def fake_source(name, split, data_dir=None):
    calls.append((name, split))
    return [example] * 5
  monkeypatch.setattr(tfds, "data_source", fake_source)
  pairs = data.load_examples(dataset, "validation", 3)
  assert pairs == [want] * 3
  assert calls == [(data.TASKS[dataset][0], "validation")]


def test_missing_tfds_data_is_a_clear_error(monkeypatch):
  import tensorflow_datasets as tfds
  def fail(*a, **k):
    raise FileNotFoundError("no builder")
  monkeypatch.setattr(tfds, "data_source", fail)
  with pytest.raises(FileNotFoundError, match="could not open TFDS 'cnn_dailymail'.*synthetic_summarize"):
    data.load_examples("cnn_dailymail", "train", 3)
