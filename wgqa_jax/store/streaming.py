"""Params read tensor by tensor, converted one attention module at a time, and placed straight
into their shardings: a 70B checkpoint never sits whole in a host's memory.

    reader = resolve.resolve(path_or_id).open_weights()   # wgqa_jax.store.resolve
    cfg, convert = variants.converter(reader.cfg, "gqa", 8)
    params = streaming.load_sharded(reader, cfg, shardings, convert)

A reader has `cfg` (its model config) and `read(path)` (one param, our layout, a host array):
hf.Reader and params_io.Reader map safetensors files and read only what is asked for;
MemorySource wraps params already in memory (a random init). `load_sharded` walks the attention
modules first, in the model's order (RandWGQA draws its weights in that order, so the result
equals variants.from_mha on the whole tree), then every other param. Each array is placed with
jax.make_array_from_callback: a process reads only the slices its own devices hold, and drops
the host copy before the next module. Peak host memory is about one attention module in float32
(benchmarks/RESULTS_scale.md measures it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from wgqa_jax.core.errors import UserError
from wgqa_jax.models import family_of


class MemorySource:
  """Params already in host memory (a random init), read like a checkpoint."""

  def __init__(self, params, cfg):
    self.cfg = cfg
    self._flat = traverse_util.flatten_dict(params)

  def read(self, path: tuple[str, ...]) -> np.ndarray:
    return np.asarray(self._flat[path])

  def paths(self) -> list[tuple[str, ...]]:
    return list(self._flat)


def place(x: np.ndarray, shape, sharding) -> jax.Array:
  """A host array -> a global array with `sharding`, built from this process's slices only."""
  if tuple(x.shape) != tuple(shape.shape):
    raise UserError(
      f"a param has shape {tuple(x.shape)} where the config implies "
      f"{tuple(shape.shape)}: config and weights disagree"
    )
  # a copy per slice: the device buffer must not alias a memory-mapped file
  return jax.make_array_from_callback(
    x.shape, sharding, lambda idx: np.array(x[idx], dtype=shape.dtype, copy=True)
  )


def load_sharded(
  source,
  cfg,
  shardings,
  convert: Callable[[dict], dict] | None = None,
  desc: str | None = "loading params",
) -> dict:
  """Params of `cfg` (global arrays placed with `shardings`, a params-shaped tree) from `source`,
  whose cfg is `cfg` itself or, with `convert`, the MHA config it converts: convert(module, path)
  gives each grouped attention module's params (variants.converter)."""
  shapes = traverse_util.flatten_dict(family_of(cfg).param_shapes(cfg))
  flat_shardings = traverse_util.flatten_dict(shardings)
  src_paths = list(traverse_util.flatten_dict(family_of(source.cfg).param_shapes(source.cfg)))
  placed: dict[tuple[str, ...], jax.Array] = {}
  bar = tqdm(
    total=len(shapes),
    desc=desc,
    unit="tensor",
    leave=False,
    disable=desc is None or jax.process_index() != 0,
  )
  done_src = set()
  for module_path, grouped in cfg.attention_modules():
    n = len(module_path)
    names = [p[n] for p in src_paths if p[:n] == module_path and len(p) == n + 1]
    module = {name: source.read(module_path + (name,)) for name in names}
    done_src.update(module_path + (name,) for name in names)
    if grouped and convert is not None:
      module = convert(module, module_path)
    for name, x in module.items():
      path = module_path + (name,)
      placed[path] = place(np.asarray(x), shapes[path], flat_shardings[path])
      bar.update()
    del module
  for path in src_paths:
    if path not in done_src:
      placed[path] = place(source.read(path), shapes[path], flat_shardings[path])
      bar.update()
  bar.close()
  missing = sorted(set(shapes) - set(placed))
  if missing:
    raise UserError(f"the checkpoint lacks params the config implies: {missing[:4]}")
  return traverse_util.unflatten_dict(placed)
