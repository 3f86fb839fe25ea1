"""Text corpora for continued pretraining: random-access sequences of documents (str), what
grain reads (wgqa_jax.data.pipeline shuffles, shards per process and tokenizes them on the fly).

`data.dataset` names one of:
  python_stdlib   offline: the Python standard library on this machine (every `.py` source, and
                  each help topic of `pydoc_data/topics.py` as a document of prose); a fixed 2% of
                  the documents, chosen by a hash of their path, is held out as validation.
                  Real code and prose none of us wrote, on every machine with Python (the
                  documents differ between Python versions: runs name the version).
  tfds:NAME       a TFDS dataset with a text feature (`data.text_field`, default "text"), read
                  with `tfds.data_source` (array_record): `tfds:c4/en`, `tfds:wikipedia/...`.
  DIR             a corpus prepared once from local JSON lines / Parquet / plain text by
                  `python -m wgqa_jax.prepare_corpus` (array_record shards + corpus.json).

Nothing is read at open beyond a listing or an index: a corpus of any size opens in milliseconds.
"""

from __future__ import annotations

import json
import os
import sysconfig
import zlib

from wgqa_jax.core import cli
from wgqa_jax.core.errors import DamagedData, MissingInput, UserError
from wgqa_jax.data import fingerprints

STDLIB = "python_stdlib"
TFDS_PREFIX = "tfds:"
MANIFEST = "corpus.json"
FORMAT = "wgqa_jax corpus 1"


def is_corpus(dataset: str) -> bool:
  """Whether `dataset` names a text corpus (not a task of (input, target) pairs)."""
  return (
    dataset == STDLIB
    or dataset.startswith(TFDS_PREFIX)
    or os.path.isdir(dataset)
    or os.sep in dataset
    or dataset.startswith(".")
  )


def held_out(key: str, every: int = 50) -> bool:
  """The fixed validation part of a corpus without splits: 1 in `every` keys, by a stable hash."""
  return zlib.crc32(key.encode("utf-8")) % every == 0


class PythonStdlib:
  """The standard library's documents of one split, listed (not read) at construction."""

  def __init__(self, split: str):
    if split not in ("train", "validation"):
      raise UserError(f"{STDLIB} has the splits train and validation, not {split!r}")
    self.root = sysconfig.get_paths()["stdlib"]
    keys = []
    for d, dirs, files in os.walk(self.root):
      dirs[:] = sorted(
        x for x in dirs if x not in ("site-packages", "dist-packages", "__pycache__")
      )
      keys += [
        os.path.relpath(os.path.join(d, f), self.root) for f in sorted(files) if f.endswith(".py")
      ]
    topics = os.path.join("pydoc_data", "topics.py")
    keys = [k for k in keys if k != topics]  # its help texts are documents of their own
    try:
      from pydoc_data import topics as pydoc_topics

      keys += [f"topic:{t}" for t in sorted(pydoc_topics.topics)]
    except ImportError:  # some distributions leave pydoc_data out
      pass
    validation = split == "validation"
    self.keys = [k for k in keys if held_out(k) == validation]

  def fingerprint(self) -> str:
    """Which documents, and their sizes: another Python version differs (stat, not read)."""
    parts = [f"python {sysconfig.get_python_version()}"]
    for i, key in enumerate(self.keys):
      if key.startswith("topic:"):
        parts.append(f"{key} {len(self[i])}")
      else:
        parts.append(f"{key} {os.path.getsize(os.path.join(self.root, key))}")
    return fingerprints.digest(parts)

  def __len__(self) -> int:
    return len(self.keys)

  def __getitem__(self, i: int) -> str:
    key = self.keys[i]
    if key.startswith("topic:"):
      from pydoc_data import topics

      return topics.topics[key[len("topic:") :]]
    # a few test files are deliberately not UTF-8: keep them, replacing what does not decode
    with open(os.path.join(self.root, key), encoding="utf-8", errors="replace") as f:
      return f.read()


class TFDSText:
  """Documents of a TFDS split's text feature (`tfds.data_source`: random access)."""

  def __init__(self, name: str, split: str, data_dir: str | None, text_field: str):
    from wgqa_jax.data import tasks as data

    self.source = data.open_tfds(name, split, data_dir)
    self.field = text_field
    if len(self.source) == 0:
      raise UserError(f"TFDS {name!r} split {split!r} is empty")
    self.split = split
    first = self.source[0]
    if text_field not in first:
      raise UserError(
        f"TFDS {name!r} has no feature {text_field!r}; its features: "
        f"{sorted(first)} (set data.text_field)"
      )

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> str:
    try:
      text = self.source[i][self.field]
    except RuntimeError as e:  # riegeli: a damaged array_record shard
      raise DamagedData(
        f"TFDS document {i} is damaged ({cli.first_line(e, 160)}); prepare the dataset again"
      ) from None
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)

  def fingerprint(self) -> str:
    return fingerprints.tfds_split(self.source, self.split)


def shard_paths(directory: str, split: str, manifest: dict) -> list[str]:
  return [os.path.join(directory, name) for name in manifest["splits"][split]["files"]]


def _check_shard_names(path: str, manifest: dict) -> None:
  """A corpus's shards are files of its own directory: a name with a path in it is refused."""
  for split, s in manifest["splits"].items():
    for name in s["files"]:
      if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise UserError(
          f"{path} names the {split} shard {name!r}, which is not a file of its directory: "
          f"prepare the corpus again"
        )


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.isdir(directory):
    raise MissingInput(f"no corpus directory {directory}")
  if not os.path.exists(path):
    raise MissingInput(
      f"{directory} is not a prepared corpus (no {MANIFEST}); prepare local JSON lines, "
      f"Parquet or text files once with: python -m wgqa_jax.prepare_corpus "
      f"--input='FILES' --out=DIR"
    )
  try:
    with open(path) as f:
      manifest = json.load(f)
    assert manifest["format"] == FORMAT
    for s in manifest["splits"].values():
      assert isinstance(s["files"], list) and isinstance(s["documents"], int)
  except (ValueError, KeyError, AssertionError, TypeError, AttributeError) as e:
    raise UserError(f"{path} is not a {FORMAT!r} manifest ({type(e).__name__})") from None
  _check_shard_names(path, manifest)
  return manifest


class PreparedCorpus:
  """Documents of a corpus written by wgqa_jax.prepare_corpus: array_record shards (one UTF-8
  record per document) read by grain's ArrayRecordDataSource, which pickles to workers."""

  def __init__(self, directory: str, split: str):
    import grain

    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
      raise UserError(
        f"corpus {directory} has the splits {sorted(manifest['splits'])}, not {split!r}"
      )
    paths = shard_paths(directory, split, manifest)
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise MissingInput(f"corpus {directory} is incomplete: {missing[0]} is missing")
    self.documents, self.directory = manifest["splits"][split]["documents"], directory
    self.manifest, self.split, self.paths = manifest, split, paths
    try:
      self.source = grain.sources.ArrayRecordDataSource(paths) if paths else []
      size = len(self.source)
    except RuntimeError as e:  # riegeli: a damaged shard (its index or a block)
      raise UserError(
        f"corpus {directory} is damaged ({cli.first_line(e, 160)}); prepare it again"
      ) from None
    if size != self.documents:
      raise UserError(
        f"corpus {directory} {split}: the shards hold {len(self.source)} "
        f"documents, {MANIFEST} says {self.documents}"
      )

  def __len__(self) -> int:
    return self.documents

  def fingerprint(self) -> str:
    """The split's documents as prepare_corpus hashed them while writing (kept in corpus.json;
    not read here), and each shard's name, size, first and last bytes (its index): a corpus
    prepared again from other text, or a shard replaced, differs; the same text prepared again
    does not. Bytes edited inside a shard are caught by its checksums when read (DamagedData)."""
    split = self.manifest["splits"][self.split]
    # a corpus from before the hash was kept: its whole corpus.json (with the time it was made)
    content = split.get("sha256") or json.dumps(self.manifest, sort_keys=True)
    return fingerprints.digest([content] + [fingerprints.of_file(p) for p in self.paths])

  def __getitem__(self, i: int) -> str:
    try:
      return self.source[i].decode("utf-8")
    except (RuntimeError, UnicodeDecodeError) as e:
      raise DamagedData(
        f"corpus {self.directory}: document {i} is damaged "
        f"({cli.first_line(e, 160)}); "
        f"prepare it again"
      ) from None


class Head:
  """The first n documents of a corpus (data.train_examples)."""

  def __init__(self, docs, n: int):
    self.docs, self.n = docs, min(n, len(docs))

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> str:
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.docs[i]

  def fingerprint(self) -> str:
    return fingerprints.digest([f"the first {self.n} of", fingerprints.of(self.docs)])


def describe(dataset: str) -> str:
  """The corpus for logs and tables (the standard library's differs between Python versions)."""
  if dataset == STDLIB:
    import platform

    return f"Python {platform.python_version()} standard library"
  return dataset


def open_corpus(dataset: str, split: str, data_dir: str | None = None, text_field: str = "text"):
  """The documents of `split` ("train" or "validation") of a corpus `dataset` names."""
  if dataset == STDLIB:
    docs = PythonStdlib(split)
  elif dataset.startswith(TFDS_PREFIX):
    docs = TFDSText(dataset[len(TFDS_PREFIX) :], split, data_dir, text_field)
  else:
    docs = PreparedCorpus(os.path.expanduser(dataset), split)
  if len(docs) == 0:
    raise UserError(f"the {split} split of {dataset} has no documents")
  return docs
