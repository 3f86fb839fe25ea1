"""safetensors files read one tensor at a time, memory-mapped, as numpy (bfloat16 included).

    with SafetensorsFile(path) as f:
      f.keys(); f.shape(key); x = f.view(key)   # np.memmap: pages are read when touched

safetensors' own numpy reader cannot return bfloat16 (numpy has no such dtype), the dtype most
HF decoder checkpoints ship in, and `load_file` reads a whole file. The format is one
little-endian u64 N, a JSON header of N bytes ({name: {dtype, shape, data_offsets}}), then the
data (https://github.com/huggingface/safetensors#format); mapping each tensor where it lies gives
ml_dtypes' bfloat16 and lazy reads. Each view is its own mapping: dropping it unmaps its pages,
so a streamed load's resident memory does not grow with the file.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from wgqa_jax.core.errors import UserError

DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


class SafetensorsFile:
  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
      if not 0 < n <= size - 8:
        raise UserError(f"{path} is not a safetensors file (bad header length)")
      try:
        header = json.loads(f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a safetensors file (unreadable header)") from e
    self.metadata = header.pop("__metadata__", None) or {}  # str -> str, the writer's notes
    self._start = 8 + n
    self._tensors = header
    for key, t in header.items():
      begin, end = t["data_offsets"]
      want = int(np.prod(t["shape"], dtype=np.int64)) * np.dtype(self.dtype(key)).itemsize
      if end - begin != want or self._start + end > size:
        raise UserError(f"{path}: tensor {key!r} runs past the end of the file (truncated?)")

  def keys(self) -> list[str]:
    return list(self._tensors)

  def __contains__(self, key: str) -> bool:
    return key in self._tensors

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._tensors[key]["shape"])

  def dtype(self, key: str):
    name = self._tensors[key]["dtype"]
    if name not in DTYPES:
      raise UserError(f"{self.path}: tensor {key!r} has dtype {name}, which we do not read")
    return DTYPES[name]

  def view(self, key: str) -> np.ndarray:
    """The tensor as a read-only memory map (a 0-size tensor as an empty array)."""
    shape, dtype = self.shape(key), self.dtype(key)
    if 0 in shape:
      return np.zeros(shape, dtype)
    begin = self._tensors[key]["data_offsets"][0]
    return np.memmap(self.path, dtype=dtype, mode="r", offset=self._start + begin, shape=shape)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return None
