"""What a run's data is, as a sha256 a resumed run compares (wgqa_jax.training.data_setup keeps
it in the workdir): each source's `fingerprint()` (its files' names, sizes and edges; never read
whole), or for a source in memory (a generated task) a digest of its items."""

from __future__ import annotations

import glob
import hashlib
import os


def digest(parts) -> str:
  """The sha256 of a sequence of strings."""
  h = hashlib.sha256()
  for part in parts:
    h.update(part.encode("utf-8") + b"\0")
  return h.hexdigest()


def of_file(path: str, edge: int = 4096) -> str:
  """A data file, without reading it whole: its name, size, and first and last `edge` bytes
  (an array_record shard's index is at its end), so a file replaced by another of the same
  size differs. Start-up reads 8 KB a shard: 64 MB for a 1 TB corpus in 64 MB shards."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(edge)
    f.seek(max(size - edge, 0))
    tail = f.read(edge)
  return f"{os.path.basename(path)} {size} {hashlib.sha256(head + tail).hexdigest()}"


def tfds_split(source, split: str) -> str:
  """A prepared TFDS split (`tfds.data_source`): its name and version, size, and each of its
  files (`of_file`): a dataset prepared again, or a shard replaced, differs."""
  info = source.dataset_info
  files = sorted(glob.glob(os.path.join(glob.escape(info.data_dir), f"*-{split}.*")))
  return digest([info.full_name, split, str(len(source))] + [of_file(f) for f in files])


def of(source) -> str:
  own = getattr(source, "fingerprint", None)
  if own is not None:
    return own()
  return digest(repr(item) for item in source)
