"""Local text files prepared once as a random-access corpus for continued pretraining (the
command line: wgqa_jax/tools/prepare_corpus.py).

Inputs (one document per record): JSON lines (`.jsonl`, `.json`, each optionally `.gz`; the
document is the `text_field` of each object), Parquet (`.parquet`, the `text_field` column, read
batch by batch) and plain text (`.txt`, `.txt.gz`; `text_unit`: one document per line, per
blank-line-separated paragraph, or per file). Documents are streamed: memory stays flat whatever
the size.
Output: array_record shards (one UTF-8 record per document; wgqa_jax.data.corpora.PreparedCorpus
reads them with grain, so a corpus of any size opens in milliseconds) and corpus.json. Every
`validation_every`-th document (the first, then every N-th) is held out as the validation
split. The output appears complete or not at all: it is written beside the target and renamed.
"""

from __future__ import annotations

import datetime
import glob
import gzip
import hashlib
import json
import os

from tqdm import tqdm

from wgqa_jax.core.errors import MissingInput, UserError
from wgqa_jax.core.workdir import writing_dir
from wgqa_jax.data import corpora

KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def kind_of(path: str) -> str:
  name = path[:-3] if path.endswith(".gz") else path
  ext = os.path.splitext(name)[1]
  if ext not in KINDS or (path.endswith(".gz") and KINDS[ext] == "parquet"):
    raise UserError(
      f"{path}: unknown format; inputs are .jsonl/.json, .parquet or .txt "
      f"(.gz for JSON lines and text)"
    )
  return KINDS[ext]


def _open_text(path: str):
  return (
    gzip.open(path, "rt", encoding="utf-8")
    if path.endswith(".gz")
    else open(path, encoding="utf-8")
  )


def _json_kind(value) -> str:
  return {bool: "boolean", int: "number", float: "number", dict: "object", list: "array"}.get(
    type(value), type(value).__name__
  )


def _is_text(arrow_type) -> bool:
  import pyarrow as pa

  if pa.types.is_dictionary(arrow_type):  # dictionary-encoded strings read as strings
    arrow_type = arrow_type.value_type
  return (
    pa.types.is_string(arrow_type)
    or pa.types.is_large_string(arrow_type)
    or pa.types.is_string_view(arrow_type)
  )


def read_documents(path: str, text_field: str, text_unit: str):
  """Yield (document, bytes of input consumed) of one file, in order."""
  kind = kind_of(path)
  if kind == "parquet":
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    if text_field not in f.schema_arrow.names:
      raise UserError(
        f"{path} has no column {text_field!r}; its columns: "
        f"{f.schema_arrow.names} (set --text_field)"
      )
    column = f.schema_arrow.field(text_field).type
    if not _is_text(column):
      raise UserError(f"{path}: column {text_field!r} holds {column}, not strings")
    per_row = os.path.getsize(path) / max(f.metadata.num_rows, 1)
    for batch in f.iter_batches(columns=[text_field], batch_size=1024):
      for text in batch.column(0).to_pylist():
        yield text or "", per_row
    return
  with _open_text(path) as f:
    if kind == "json":
      for n, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except ValueError as e:
          raise UserError(f"{path}:{n}: not a JSON line ({e})") from None
        if not isinstance(record, dict) or text_field not in record:
          keys = sorted(record) if isinstance(record, dict) else type(record).__name__
          raise UserError(
            f"{path}:{n} has no field {text_field!r}; its fields: {keys} (set --text_field)"
          )
        text = record[text_field]
        if text is not None and not isinstance(text, str):
          raise UserError(
            f"{path}:{n}: {text_field!r} is a JSON {_json_kind(text)} ({json.dumps(text)[:40]}),"
            f" not a string"
          )
        yield text or "", len(line)
    elif text_unit == "file":
      text = f.read()
      yield text, len(text)
    elif text_unit == "line":
      for line in f:
        yield line.rstrip("\n"), len(line)
    else:  # paragraphs: runs of non-blank lines
      para, size = [], 0
      for line in f:
        size += len(line)
        if line.strip():
          para.append(line.rstrip("\n"))
        elif para:
          yield "\n".join(para), size
          para, size = [], 0
      if para:
        yield "\n".join(para), size


class ShardWriter:
  """Documents of one split into array_record shards of at most `shard_bytes` each."""

  def __init__(self, directory: str, split: str, shard_bytes: int):
    self.directory, self.split, self.shard_bytes = directory, split, shard_bytes
    self.files, self.documents, self.bytes = [], 0, 0
    self.sha256 = hashlib.sha256()  # of the documents, in order: what a resume compares
    self._writer, self._in_shard = None, 0

  def write(self, record: bytes) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    if self._writer is None or self._in_shard >= self.shard_bytes:
      self.close()
      name = f"{self.split}-{len(self.files):05d}.array_record"
      # group_size 1: every document is its own chunk, so a random read decodes one document
      self._writer = ArrayRecordWriter(os.path.join(self.directory, name), "group_size:1")
      self.files.append(name)
      self._in_shard = 0
    self._writer.write(record)
    self.sha256.update(len(record).to_bytes(8, "little") + record)
    self.documents += 1
    self.bytes += len(record)
    self._in_shard += len(record)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def summary(self) -> dict:
    return {
      "files": self.files,
      "documents": self.documents,
      "bytes": self.bytes,
      "sha256": self.sha256.hexdigest(),
    }


def input_files(patterns: list[str]) -> list[str]:
  """The files the --input globs name, in order; a file named twice (by one path or another)
  is refused: its documents would be written twice."""
  files, named_by = [], {}
  for pattern in patterns:
    matched = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matched:
      raise MissingInput(f"--input {pattern!r} matches no file")
    for m in matched:
      if not os.path.isfile(m):
        continue
      real = os.path.realpath(m)
      if real in named_by:
        first = named_by[real]
        raise UserError(
          f"{m} is named twice by --input ({first!r}{'' if first == pattern else f', {pattern!r}'}"
          f"): its documents would be written twice; name each file once"
        )
      named_by[real] = pattern
      files.append(m)
  if not files:
    raise MissingInput(f"--input {','.join(patterns)} matches no file (only directories)")
  for f in files:
    kind_of(f)
  return files


def check_out(out: str, files: list[str], overwrite: bool) -> None:
  """What --out may be: a new or empty directory, or (with overwrite) a prepared corpus; never
  an input or a directory holding one (compared by real path: links and `..` resolved)."""
  real = os.path.realpath(out)
  for f in files:
    f_real = os.path.realpath(f)
    if f_real == real or f_real.startswith(real + os.sep):
      raise UserError(
        f"--out={out} {'is' if f_real == real else 'holds'} the input {f}: write the corpus "
        f"elsewhere"
      )
  if not os.path.lexists(out) or (os.path.isdir(out) and not os.listdir(out)):
    return
  if not os.path.isdir(out):
    raise UserError(f"--out={out} is a file, not a corpus directory: name another --out")
  if not overwrite:
    raise UserError(f"--out={out} exists; pass --overwrite to replace it")
  if not os.path.exists(os.path.join(out, corpora.MANIFEST)):
    raise UserError(
      f"--out={out} is not a prepared corpus (no {corpora.MANIFEST}): --overwrite replaces "
      f"only a corpus; name a new or empty directory"
    )


def prepare(
  files: list[str],
  out: str,
  text_field: str = "text",
  text_unit: str = "line",
  validation_every: int = 200,
  shard_mb: float = 64,
  overwrite: bool = False,
  progress: bool = True,
) -> dict:
  """Write the corpus of `files` to `out`; returns its manifest."""
  if validation_every < 2:
    raise UserError(f"--validation_every={validation_every}: must be at least 2")
  if not shard_mb > 0:
    raise UserError(f"--shard_mb={shard_mb}: must be positive")
  out = os.path.abspath(os.path.expanduser(out))
  check_out(out, files, overwrite)
  with writing_dir(out) as tmp:  # `out` is always whole: the old corpus or the new one
    bar = tqdm(
      total=sum(os.path.getsize(f) for f in files),
      unit="B",
      unit_scale=True,
      desc="preparing corpus",
      disable=not progress,
      dynamic_ncols=True,
      leave=False,
    )
    try:
      writers = {
        split: ShardWriter(tmp, split, int(shard_mb * 2**20)) for split in ("train", "validation")
      }
      n, empty = 0, 0
      done = 0  # bytes of the files finished
      for path in files:
        size_on_disk, read = os.path.getsize(path), 0
        for text, size in _readable(path, text_field, text_unit):
          # progress in bytes on disk: what is read (characters; decompressed for .gz) counts
          # up to the file's size, and the file's end sets it exactly
          step = min(size, size_on_disk - read)
          read += step
          bar.update(step)
          if not text.strip():
            empty += 1
            continue
          split = "validation" if n % validation_every == 0 else "train"
          writers[split].write(text.encode("utf-8"))  # a full disk is not the input's fault
          n += 1
        done += size_on_disk
        bar.update(done - bar.n)
    finally:
      bar.close()
    for w in writers.values():
      w.close()
    if writers["train"].documents == 0:
      raise UserError(
        f"{', '.join(files[:3])}{' ...' if len(files) > 3 else ''}: {n} "
        f"non-empty document(s); a corpus needs at least 2 (one is held out)"
      )
    manifest = {
      "format": corpora.FORMAT,
      "splits": {k: w.summary() for k, w in writers.items()},
      "inputs": files,
      "text_field": text_field,
      "text_unit": text_unit,
      "validation_every": validation_every,
      "empty_documents_skipped": empty,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    with open(os.path.join(tmp, corpora.MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1)
  return manifest


def _readable(path: str, text_field: str, text_unit: str):
  """read_documents, its read errors (damaged gzip, bad bytes) one line naming the file; what
  the caller does with each document (writing it) is not under this."""
  try:
    yield from read_documents(path, text_field, text_unit)
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None
