"""What each process of a (multi-host) run does alone: process 0 prints and writes the
workdir's files; the others find what it wrote."""

from __future__ import annotations

import jax
from tqdm import tqdm


def is_main_process() -> bool:
  return jax.process_index() == 0


def say(msg: str) -> None:
  """Print a line on process 0 (through tqdm: progress bars stay whole)."""
  if is_main_process():
    tqdm.write(msg)


def first_on_process_0(fn):
  """fn() on process 0, then on the others (which find what process 0 wrote to the workdir)."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils

  out = fn() if is_main_process() else None
  multihost_utils.sync_global_devices("wgqa_jax: process 0 done")
  return out if is_main_process() else fn()
