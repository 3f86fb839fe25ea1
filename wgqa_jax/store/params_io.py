"""Our params directory: `params.safetensors` (keys are '/'-joined tree paths),
`wgqa_config.json` (the model config) and, when known, `generation.json` (the checkpoint's
generation settings, wgqa_jax.decoding.settings), written by `save` and read by `load`.

Verified: `save` writes a CRC-32 of every tensor into the safetensors header, and every read
checks it and that the values are finite, so a damaged file is refused in one line instead of
giving NaN or silently wrong outputs. `save` writes the directory beside its target and swaps it
in: a target is always the old directory or the new one, complete.

    save(params, cfg, out_dir); params, cfg = load(out_dir)

Any path a user names (a params dir, a workdir, a HF checkpoint) is read through
wgqa_jax.store.resolve.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
from flax import traverse_util

from wgqa_jax.core.errors import MissingInput, UserError
from wgqa_jax.models import config_from_dict, family_of
from wgqa_jax.store import generation_file
from wgqa_jax.store.tensor_files import SafetensorsFile

CONFIG_FILE = "wgqa_config.json"
PARAMS_FILE = "params.safetensors"
CHECKSUMS = "wgqa_jax.crc32"  # safetensors header metadata: {key: CRC-32 of its bytes}


def crc32(x: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(x).reshape(-1).view(np.uint8))


def flatten(params) -> dict[str, np.ndarray]:
  return {
    k: np.ascontiguousarray(np.asarray(v))
    for k, v in traverse_util.flatten_dict(params, sep="/").items()
  }


def is_params_dir(path: str) -> bool:
  return os.path.exists(os.path.join(path, CONFIG_FILE))


def save(params, cfg, out_dir: str, generation_settings: dict | None = None) -> None:
  """Write the params dir: into a temporary sibling, then swapped in for `out_dir` (whose old
  contents, if any, are replaced whole; a save killed midway leaves `out_dir` as it was)."""
  from safetensors.numpy import save_file

  from wgqa_jax.core.workdir import writing_dir

  with writing_dir(out_dir) as tmp:
    flat = flatten(params)
    save_file(
      flat,
      os.path.join(tmp, PARAMS_FILE),
      metadata={CHECKSUMS: json.dumps({k: crc32(v) for k, v in flat.items()})},
    )
    cfg.save(os.path.join(tmp, CONFIG_FILE))
    if generation_settings:
      generation_file.save(generation_settings, tmp)


class Reader:
  """Our params dir read one tensor at a time (memory-mapped): `cfg`, and `read(path)` for one
  param (a copy: the file may be rewritten later). Shapes are checked against the config first."""

  def __init__(self, path: str):
    cfg_path, params_path = os.path.join(path, CONFIG_FILE), os.path.join(path, PARAMS_FILE)
    for p in (cfg_path, params_path):
      if not os.path.exists(p):
        raise MissingInput(f"{path} is not a wgqa_jax params directory: missing {p}")
    self.dir = path
    self.cfg = load_config(path)
    self.file = SafetensorsFile(params_path)
    check_shapes({k: self.file.shape(k) for k in self.file.keys()}, self.cfg)
    try:  # params dirs written before checksums existed have none: finiteness is still checked
      self.checksums = json.loads(self.file.metadata.get(CHECKSUMS, "{}"))
    except ValueError:
      raise UserError(f"{params_path}: its checksums are unreadable: the file is damaged") from None

  def read(self, path: tuple[str, ...]) -> np.ndarray:
    """One param, verified: its CRC-32 (when the file has them) and finite values."""
    key = "/".join(path)
    x = np.array(self.file.view(key))
    where = os.path.join(self.dir, PARAMS_FILE)
    if key in self.checksums and crc32(x) != self.checksums[key]:
      raise UserError(
        f"{where} is damaged: {key} does not match the checksum written with it. "
        f"Use another copy (best/, final/ or a checkpoint of the run)"
      )
    if np.issubdtype(x.dtype, np.inexact) or x.dtype.name == "bfloat16":
      if not np.isfinite(x.astype(np.float32)).all():
        raise UserError(f"{where}: {key} holds NaN or infinite values; these params cannot be used")
    return x

  def paths(self) -> list[tuple[str, ...]]:
    return [tuple(k.split("/")) for k in self.file.keys()]


def load(path: str):
  """(params, cfg) from a directory written by `save`; checks params against the config."""
  reader = Reader(path)
  return traverse_util.unflatten_dict({p: reader.read(p) for p in reader.paths()}), reader.cfg


def load_config(path: str):
  """The model config of our params dir, without reading weights."""
  with open(os.path.join(path, CONFIG_FILE)) as f:
    try:
      return config_from_dict(json.load(f))
    except ValueError as e:  # torn JSON, or keys no config has
      raise UserError(f"{os.path.join(path, CONFIG_FILE)}: {e}") from None


def check_shapes(got: dict[str, tuple[int, ...]], cfg) -> None:
  """Raise if the '/'-joined param paths -> shapes `got` are not exactly those `cfg` implies."""
  expected = {
    k: tuple(v.shape)
    for k, v in traverse_util.flatten_dict(family_of(cfg).param_shapes(cfg), sep="/").items()
  }
  got = {k: tuple(v) for k, v in got.items()}
  missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
  wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
  if missing or extra or wrong:
    raise UserError(
      "params do not match the config:"
      + (f"\n  missing: {missing[:8]}" if missing else "")
      + (f"\n  unexpected: {extra[:8]}" if extra else "")
      + "".join(f"\n  {k}: has {got[k]}, config implies {expected[k]}" for k in wrong[:8])
    )
