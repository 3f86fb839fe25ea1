"""Tasks (wgqa_jax.data): the built-in synthetic ones, and TFDS datasets read through the real
readers: built here by the real TFDS builders (wgqa_jax.local_tfds, array_record; the tfds_dir
fixture) and opened with tfds.data_source, as a run opens them."""

import pytest
from conftest import SMALL

from wgqa_jax.data import local_tfds, tasks


def test_tokenizer_sample_is_bounded_and_spread_over_the_split():
  pairs = [(f"doc {i} " + "w" * 1000, f"sum {i}") for i in range(10_000)]
  texts = list(tasks.tokenizer_sample(pairs, max_chars=50_000, max_examples=1000))
  assert sum(map(len, texts)) < 50_000 + 1100
  firsts = [int(t.split()[1]) for t in texts[::2]]
  assert firsts[:3] == [0, 10, 20]  # every 10th example, not the first 50


def test_synthetic_task_is_deterministic_and_splits_differ():
  a, b = tasks.synthetic_summarize(50, 0), tasks.synthetic_summarize(50, 0)
  assert a == b and a != tasks.synthetic_summarize(50, 1)
  doc, summary = a[0]
  assert doc.startswith("summarize: ") and doc[len("summarize: ") :].startswith(summary)


def test_synthetic_translation_follows_its_dictionary_and_reordering():
  pairs = tasks.synthetic_translate(300, 0)
  assert pairs == tasks.synthetic_translate(300, 0) and pairs != tasks.synthetic_translate(300, 1)
  prefix = "translate German to English: "
  lexicon = {}
  for src, tgt in pairs:
    assert src.startswith(prefix) and src.endswith(".") and tgt.endswith(".")
    s, t = src[len(prefix) : -1].split(), tgt[:-1].split()
    assert 3 <= len(s) == len(t) <= 8
    t = [t[0]] + t[2:] + [t[1]]  # undo: the source's last word went to second place
    for a, b in zip(s, t):
      assert lexicon.setdefault(a, b) == b  # one fixed translation per word
  assert len(set(lexicon.values())) == len(lexicon) > 140  # one-to-one, 150 words
  valid = list(tasks.source("synthetic_translate", "validation", 20))
  assert valid == tasks.synthetic_translate(20, 1) and tasks.is_translation("synthetic_translate")


# ------------------------------------------------------------------- TFDS, real reader ----
@pytest.mark.parametrize("dataset", sorted(local_tfds.SHAPES))
def test_tfds_splits_are_read_with_their_fields_and_prefix(tfds_dir, dataset):
  src = tasks.source(dataset, "validation", None, tfds_dir)
  assert type(src).__name__ == "TFDSPairs" and len(src) == SMALL["validation"]
  prefix = tasks.TASKS[dataset][3]
  want = set()
  for _, ex in local_tfds.examples(dataset, "validation", SMALL["validation"]):
    fields = ex.get("translation", ex)
    want.add((prefix + fields[tasks.TASKS[dataset][1]], fields[tasks.TASKS[dataset][2]]))
  assert set(src) == want  # TFDS shuffles records when it writes them: compare as sets
  assert len(tasks.source(dataset, "train", 7, tfds_dir)) == 7
  with pytest.raises(IndexError):
    src[len(src)]


def test_missing_tfds_data_is_a_clear_error(tmp_path):
  with pytest.raises(
    FileNotFoundError, match="could not open TFDS 'cnn_dailymail'.*synthetic_summarize"
  ) as e:
    tasks.source("cnn_dailymail", "train", 3, str(tmp_path))
  assert "\n" not in str(e.value)


def test_unknown_dataset_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown dataset"):
    tasks.source("imagenet", "train", 10)
