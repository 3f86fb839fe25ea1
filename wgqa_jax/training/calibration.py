"""Calibration statistics: what a pretrained MHA model's attention modules see on real data.

For every attention module, the (d_model, d_model) sum of x x^T over its K/V inputs x (keys that no
query reads, padding, are left out). Every head's key and value covariance follows from it (W_h^T
gram W_l), which is all the calibrated merges (wgqa_jax.grouping.calibrated_merge) need; a few MB
for a 7B model, whatever the number of calibration tokens.

    stats = calibration.collect(params, cfg, batches)     # placed batches of the training data
    calibration.save(path, stats); calibration.load(path, cfg)

wgqa_jax.training.trainer collects them from the first `grouping.calibration_batches` training
batches when the variant is calibrated, and keeps them in WORKDIR/calibration.npz (a resumed run
reads them).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib

import jax
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.models.attention import CALIBRATION
from wgqa_jax.training import objectives

FILE = "calibration.npz"


@dataclasses.dataclass
class Statistics:
  """Per attention module (param path): the gram sum x x^T (float64) and its token count."""

  grams: dict[tuple[str, ...], np.ndarray]
  tokens: dict[tuple[str, ...], int]
  batches: int = 0
  source: str = ""  # what they were computed from (the caller's description, kept in the file)

  def gram(self, path: tuple[str, ...]) -> np.ndarray:
    if path not in self.grams:
      raise UserError(f"the calibration statistics have no attention module {'/'.join(path)}")
    return self.grams[path]

  def add(self, other: dict) -> None:
    for path, (gram, count) in other.items():
      self.grams[path] = self.grams.get(path, 0.0) + np.asarray(gram, np.float64)
      self.tokens[path] = self.tokens.get(path, 0) + int(count)
    self.batches += 1


def module_grams(params, batch, cfg) -> dict[tuple[str, ...], tuple[jax.Array, jax.Array]]:
  """{attention module path: (gram (d, d), tokens)} of one batch (jit it: grams_step)."""
  _, sown = objectives.forward(params, batch, cfg, mutable=[CALIBRATION])
  flat = traverse_util.flatten_dict(sown[CALIBRATION])
  out = {}
  for path in {p[:-1] for p in flat}:
    gram, tokens = flat[path + ("gram",)], flat[path + ("tokens",)]
    if "layers" not in path:
      out[path] = (gram, tokens)
      continue
    i = path.index("layers")  # a scanned stack: one leading axis over its layers
    for n in range(gram.shape[0]):
      out[path[:i] + (f"layers_{n}",) + path[i + 1 :]] = (gram[n], tokens[n])
  return out


def grams_step(cfg):
  """The compiled calibration step of `cfg`'s MHA model: (params in the per-layer layout,
  batch) -> module_grams. Its logits are never computed (nothing reads them); with
  cfg.scan_layers the layers run as one scanned layer, so each layer's weights are gathered
  only while it runs. wgqa_jax.lab.plan sizes it."""
  return jax.jit(lambda p, b: module_grams(p, b, cfg.replace(remat="none")))


def collect(params, cfg, batches, num_batches: int, desc: str | None = "calibrating") -> Statistics:
  """Statistics of `cfg`'s MHA model over `num_batches` batches of `batches` (an iterator of
  model inputs, on the params' mesh)."""
  step = grams_step(cfg)
  stats = Statistics({}, {})
  for batch in tqdm(
    batches,
    total=num_batches,
    desc=desc,
    leave=False,
    disable=desc is None or jax.process_index() != 0,
  ):
    stats.add(jax.device_get(step(params, batch)))
    if stats.batches == num_batches:
      break
  if stats.batches < num_batches:
    raise UserError(f"calibration needs {num_batches} batches; the data gave {stats.batches}")
  empty = [p for p, n in stats.tokens.items() if n == 0]
  if empty:
    raise UserError(f"no calibration token reached {'/'.join(empty[0])}")
  return stats


def save(path: str, stats: Statistics) -> None:
  """One .npz, written whole (a temporary sibling renamed over it)."""
  arrays = {"batches": np.int64(stats.batches), "source": np.array(stats.source)}
  for p, gram in stats.grams.items():
    arrays["gram:" + "/".join(p)] = gram
    arrays["tokens:" + "/".join(p)] = np.int64(stats.tokens[p])
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load(path: str, cfg=None) -> Statistics:
  """Statistics from `save`; with `cfg`, checked to cover its grouped attention modules."""
  try:
    with np.load(path, allow_pickle=False) as f:  # a pickle in the file is refused, never run
      grams = {
        tuple(k[5:].split("/")): np.asarray(f[k], np.float64)
        for k in f.files
        if k.startswith("gram:")
      }
      tokens = {tuple(k[7:].split("/")): int(f[k]) for k in f.files if k.startswith("tokens:")}
      batches = int(f["batches"])
      source = str(f["source"]) if "source" in f.files else ""
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise UserError(
      f"{path} is not a calibration statistics file ({type(e).__name__}: {cli.first_line(e)})"
    ) from None
  for module, gram in grams.items():
    where = f"{path}: the statistics of {'/'.join(module)}"
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
      raise UserError(f"{where} have shape {gram.shape}, not (d, d): the file is damaged")
    if not np.isfinite(gram).all():
      raise UserError(f"{where} are not finite (NaN or inf): the file is damaged")
    if tokens.get(module, 0) <= 0:
      raise UserError(f"{where} count {tokens.get(module, 0)} tokens: the file is damaged")
  stats = Statistics(grams, tokens, batches, source)
  if cfg is not None:
    d = cfg.width
    for module, grouped in cfg.attention_modules():
      if not grouped:
        continue
      if module not in grams:
        raise UserError(
          f"{path} has no statistics of attention module {'/'.join(module)}: "
          f"it was calibrated on another model"
        )
      if grams[module].shape != (d, d):
        raise UserError(
          f"{path} has statistics of shape {grams[module].shape} for "
          f"{'/'.join(module)}, whose inputs are {d} wide: it was calibrated on "
          f"another model"
        )
  return stats
