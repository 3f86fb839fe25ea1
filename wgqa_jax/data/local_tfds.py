"""TFDS datasets shaped like cnn_dailymail, multi_news and wmt14_translate/de-en, built here.

They are written by the real TFDS builders (their features, name and version) as array_record,
with generated text of realistic lengths instead of the download, so `tfds.data_source` (and
every run) reads them exactly as it reads the real ones. No TensorFlow, no internet. For tests,
the data benchmarks, and offline dry runs of the TFDS path (the command line:
wgqa_jax/tools/local_tfds.py).

Text: pseudo-words in sentences; summaries are the article's lead sentences (so ROUGE means
something), translations a word-for-word dictionary. Lengths (words, log-normal), from the real
datasets: CNN/DailyMail articles ~690 (train 287,113), highlights ~52; Multi-News documents
~2,100, summaries ~260; WMT14 de-en sentences ~23.
"""

from __future__ import annotations

import numpy as np

from wgqa_jax.core.errors import UserError

# dataset -> (TFDS name, builder config, median words of input, of target, sizes per split)
SHAPES = {
  "cnn_dailymail": (
    "cnn_dailymail",
    None,
    620,
    48,
    {"train": 287113, "validation": 13368, "test": 11490},
  ),
  "multi_news": ("multi_news", None, 1800, 240, {"train": 44972, "validation": 5622, "test": 5622}),
  "wmt14_de_en": (
    "wmt14_translate",
    "de-en",
    21,
    23,
    {"train": 4508785, "validation": 3000, "test": 3003},
  ),
}
# the modules that register the older (class-style) builders
BUILDER_MODULES = {
  "cnn_dailymail": "tensorflow_datasets.summarization.cnn_dailymail",
  "wmt14_de_en": "tensorflow_datasets.translate.wmt14",
}


def _vocabulary(seed: int, n: int = 6000) -> np.ndarray:
  """n distinct pseudo-words, in frequency-rank order (not alphabetical)."""
  rng = np.random.default_rng(seed)
  syllables = np.array(
    [
      "ka",
      "to",
      "mi",
      "ra",
      "ne",
      "lo",
      "su",
      "vi",
      "de",
      "po",
      "an",
      "el",
      "ber",
      "sch",
      "ung",
      "th",
      "ow",
      "ing",
      "st",
      "ar",
    ]
  )
  words = {"".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(n * 3)}
  return rng.permutation(sorted(words)[:n])


def _lengths(rng, n: int, median: int) -> np.ndarray:
  return np.maximum(3, rng.lognormal(np.log(median), 0.45, n)).astype(np.int64)


def _sentences(rng, words: np.ndarray, n_words: int) -> list[str]:
  ids = rng.zipf(1.3, n_words) % len(words)  # a few frequent words, a long tail, as in text
  cuts = np.cumsum(rng.integers(8, 30, n_words // 8 + 2))
  cuts = cuts[cuts < n_words].tolist()
  return [
    " ".join(words[ids[a:b]]).capitalize() + "."
    for a, b in zip([0] + cuts, cuts + [n_words])
    if b > a
  ]


def examples(dataset: str, split: str, n: int, seed: int = 0):
  """(key, features) of n generated examples in the dataset's TFDS feature layout."""
  _, _, in_words, out_words, _ = SHAPES[dataset]
  words = _vocabulary(0)
  lexicon = dict(zip(words, np.roll(words, 7)))  # wmt: a fixed "translation" of each word
  rng = np.random.default_rng([seed, ["train", "validation", "test"].index(split)])
  lengths = _lengths(rng, n, in_words)
  for i, length in enumerate(lengths):
    if dataset == "wmt14_de_en":
      de = _sentences(rng, words, int(length))
      en = [
        " ".join(lexicon[w.rstrip(".").lower()] for w in s.split()).capitalize() + "." for s in de
      ]
      yield f"{split}-{i}", {"de": " ".join(de), "en": " ".join(en)}
      continue
    sentences = _sentences(rng, words, int(length))
    lead, total = [], 0
    for s in sentences:  # lead sentences up to about the target length
      if total and total + s.count(" ") + 1 > out_words:
        break
      lead.append(s)
      total += s.count(" ") + 1
    doc, summary = " ".join(sentences), " ".join(lead)
    if dataset == "cnn_dailymail":
      yield (
        f"{split}-{i}",
        {"article": doc, "highlights": summary, "id": f"{split}-{i}", "publisher": "cnn"},
      )
    else:
      yield f"{split}-{i}", {"document": doc, "summary": summary}


def build(dataset: str, data_dir: str, sizes: dict[str, int] | None = None, seed: int = 0) -> str:
  """Write the dataset's splits (`sizes`, default: the real ones) under data_dir with the real
  TFDS builder; returns its directory. Does nothing if it is already there."""
  import importlib

  import tensorflow_datasets as tfds

  if dataset in BUILDER_MODULES:
    importlib.import_module(BUILDER_MODULES[dataset])
  tfds.disable_progress_bar()
  # Over 1 GB, TFDS's writer spills its shuffle buffer to disk through tf.io.gfile, which needs
  # TensorFlow; without it, shuffle in memory (the real 287k-article split is ~1.3 GB).
  from tensorflow_datasets.core import shuffle

  shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, 32 << 30)
  name, config, _, _, real_sizes = SHAPES[dataset]
  sizes = dict(real_sizes if sizes is None else sizes)
  real = tfds.builder_cls(name)

  class Local(real, skip_registration=True):
    def _split_generators(self, dl_manager):
      return {split: examples(dataset, split, n, seed) for split, n in sizes.items()}

  Local.name = name
  builder = Local(config=config, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():  # reused as it is: only if it is what was asked for
    have = {split: info.num_examples for split, info in builder.info.splits.items()}
    if have != sizes:
      raise UserError(
        f"{builder.data_dir} already holds {dataset} with {have} examples, not {sizes}: "
        f"remove it to build it again, or pass another --data_dir"
      )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
  )
  return builder.data_dir
