"""Training checkpoints that are verified before they are trusted.

orbax writes the state (async) to workdir/checkpoints/<step>/state, and the input pipeline's
position (wgqa_jax.data.pipeline: where each process's next batch starts) to .../<step>/data;
beside them we write workdir/integrity/<step>.json, a fingerprint of every array computed on
device from the very state being saved (position-weighted sums of its bits, so flipped, garbled
or reordered bytes change it), and the data position itself. Restoring walks the checkpoints
newest first and takes the first one that
  1. restores (orbax can read every file),
  2. matches its fingerprint, and
  3. holds only finite numbers;
a checkpoint that fails is moved to workdir/checkpoints_quarantine/ (never deleted), with a
warning that names it and why, and the next older one is tried. If none is good the run stops
with one clear error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from wgqa_jax.core import sharding, workdir as workdir_lib
from wgqa_jax.core.errors import EXIT_DISK_FULL, Failure, UserError, is_disk_full
from wgqa_jax.core.numerics import all_finite, fingerprint

log = logging.getLogger(__name__)


DATA_KEY = "data_state"  # the integrity record's entry for the input pipeline's position


class NoGoodCheckpoint(UserError):
  """Every checkpoint of a workdir failed to restore or verify."""


def _flat_fingerprint(tree) -> dict[str, list[int]]:
  fp = jax.device_get(fingerprint(tree))
  return {
    jax.tree_util.keystr(path): [int(v) for v in np.asarray(leaf)]
    for path, leaf in jax.tree_util.tree_leaves_with_path(fp)
  }


def _canonical(key: str) -> str:
  """A record key with the container kinds dropped: "['opt_state'][1].mu" and, as orbax gives
  it back when restored without a template, "['opt_state'][1]['mu']" are both "opt_state/1/mu"."""
  parts = re.findall(r"\['([^']*)'\]|\.(\w+)|\[(\d+)\]", key)
  return "/".join(next(p for p in groups if p) for groups in parts) if parts else key


def has_checkpoints(workdir: str) -> bool:
  """Whether workdir holds any saved step (without opening, or creating, a manager)."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpt_dir) and any(name.isdigit() for name in os.listdir(ckpt_dir))


class DiskFull(Failure):
  """A checkpoint could not be written: no space left (or quota). The run stops (exit 74,
  errors.EXIT_DISK_FULL) naming the last good checkpoint; freeing space and rerunning resumes."""

  exit_code = EXIT_DISK_FULL
  exit_now = True  # orbax's save threads, stuck on the full disk, would spew at shutdown
  label = "disk full"


def not_damage(e: BaseException) -> bool:
  """A restore error that says nothing about the checkpoint: out of (device) memory, a
  permission, a full disk. The checkpoint may be intact, so it is not moved aside."""
  text = str(e)
  return (
    isinstance(e, (MemoryError, PermissionError))
    or "RESOURCE_EXHAUSTED" in text
    or "Out of memory" in text
    or "Permission denied" in text
    or is_disk_full(e)
  )


class Checkpoints:
  """Save / verified restore of the train state under workdir. An asynchronous save that fails
  for lack of space is reported (DiskFull) at the next `check`, `save` or `close`."""

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self.dir = os.path.join(workdir, "checkpoints")
    self.integrity_dir = os.path.join(workdir, "integrity")
    self.quarantine_dir = os.path.join(workdir, "checkpoints_quarantine")
    self.keep = keep
    self.mngr = self._manager()

  def _manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
      self.dir,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=self.keep, create=True, enable_async_checkpointing=True
      ),
    )

  def _record(self, step: int) -> str:
    return os.path.join(self.integrity_dir, f"{step}.json")

  def save(self, step: int, state, data_state: dict | None = None) -> None:
    """data_state: JSON (the input pipeline's position), restored with the state."""
    data_state = data_state or {}
    record = _flat_fingerprint(state)  # every process: a collective on multi-host
    record[DATA_KEY] = data_state
    with self._reporting_disk_full(step):
      if jax.process_index() == 0:  # written before orbax finalises the step
        os.makedirs(self.integrity_dir, exist_ok=True)
        workdir_lib.write_json(self._record(step), record)
      self.mngr.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        ),
      )
    self._saving = step

  def check(self) -> None:
    """Raise DiskFull now if the last asynchronous save failed for lack of space."""
    with self._reporting_disk_full(getattr(self, "_saving", None)):
      self.mngr.check_for_errors()

  @contextlib.contextmanager
  def _reporting_disk_full(self, step):
    try:
      yield
    except Exception as e:  # orbax wraps the OS error in its own types: look at the message
      if not is_disk_full(e):
        raise
      raise self.disk_full(e, step) from None

  def disk_full(self, e: BaseException, step=None) -> DiskFull:
    """The DiskFull to raise for error `e` (met while saving `step`, or writing anything else
    in the workdir), naming the last good checkpoint."""
    self.failed = True
    in_flight = getattr(self, "_saving", None)
    try:  # did the asynchronous save in flight finish after all?
      self.mngr.wait_until_finished()
      self.mngr.check_for_errors()
      in_flight = None
    except Exception:  # it failed too (or cannot tell): not a good checkpoint
      pass
    # the step being saved, and an unconfirmed one in flight, may be incomplete
    unconfirmed = [x for x in (step, in_flight) if x is not None]
    step = step if step is not None else getattr(self, "_saving", None)
    limit = min(unconfirmed) if unconfirmed else float("inf")
    failed = re.search(r"checkpoints/(\d+)\.orbax-checkpoint-tmp", str(e))
    step = int(failed.group(1)) if failed else step
    good = [s for s in self.mngr.all_steps() if s < limit and os.path.exists(self._record(s))]
    what = (
      f"writing {e.filename}"
      if getattr(e, "filename", None)
      else f"saving checkpoint {step}"
      if step is not None
      else "saving a checkpoint"
    )
    return DiskFull(
      f"no space left on the device of {self.workdir} while {what}; the last good "
      f"checkpoint is {'step ' + str(max(good)) if good else 'none'}. Free space and run "
      f"the same command again to resume"
    )

  def steps(self) -> list[int]:
    return list(self.mngr.all_steps())

  def restore_latest_good(self, template, shardings):
    """(state, data state) of the newest checkpoint that restores, verifies and is finite,
    restored onto `shardings`; None if the workdir has no checkpoint. Bad ones are quarantined
    on the way. The data state is None for checkpoints written before it was saved."""
    abstract = sharding.abstract(template, shardings)
    steps = sorted(self.steps(), reverse=True)
    for step in steps:
      other = self.other_model(step, abstract)
      if other:  # not damage: this run builds another model; the checkpoint stays as it is
        raise UserError(
          f"checkpoint {step} in {self.dir} holds another model than this run builds ({other}): "
          f"the config no longer builds what was trained; pass another --workdir (the "
          f"checkpoint is left as it is)"
        )
      restored, problem = self.try_restore(step, abstract)
      if problem is None:
        return restored
      self._quarantine(step, problem)
    if steps:
      raise NoGoodCheckpoint(
        f"no checkpoint in {self.dir} restores intact (steps {sorted(steps)} were moved to "
        f"{self.quarantine_dir}); start fresh with another --workdir, or restore a backup"
      )
    return None

  def other_model(self, step: int, abstract) -> str | None:
    """How checkpoint `step`'s params differ in names or shapes from `abstract`'s (a model
    the config builds otherwise: e.g. another KV allocation), read from its metadata; None
    when they agree or the metadata cannot be read (then restoring says what is wrong)."""
    if abstract is None or "params" not in abstract:
      return None
    shapes = lambda tree: {
      jax.tree_util.keystr(path): tuple(leaf.shape)
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
    try:
      saved = ocp.StandardCheckpointer().metadata(os.path.join(self.dir, str(step), "state"))
      saved = shapes(getattr(saved, "item_metadata", saved)["params"])
    except Exception:  # damaged or older metadata: the restore decides
      return None
    want = shapes(abstract["params"])
    for key in sorted(set(saved) | set(want)):
      if saved.get(key) != want.get(key):
        return f"params{key}: {saved.get(key, 'absent')} saved, {want.get(key, 'absent')} now"
    return None

  def try_restore(self, step: int, abstract=None):
    """((state, data state), None) if checkpoint `step` restores, verifies and is finite, else
    (None, why). abstract: ShapeDtypeStructs with shardings to restore onto (None: as saved)."""
    try:
      if os.path.isdir(os.path.join(self.dir, str(step), "default")):  # before the data state
        state, data_state = self.mngr.restore(step, args=ocp.args.StandardRestore(abstract)), None
      else:
        both = self.mngr.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
          ),
        )
        state, data_state = both["state"], dict(both["data"])
    except Exception as e:  # garbled or truncated files: orbax / tensorstore errors
      if not_damage(e):  # the machine's state, not the checkpoint's: never quarantined
        raise
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
      return None, f"does not restore ({type(e).__name__}: {first})"
    if os.path.exists(self._record(step)):
      with open(self._record(step)) as f:
        want = json.load(f)
      got = _flat_fingerprint(state)
      if data_state is not None:
        got[DATA_KEY] = data_state
        want.setdefault(DATA_KEY, {})
      if abstract is None:  # restored as saved: dicts and lists where the run had other nodes
        want = {_canonical(k): v for k, v in want.items()}
        got = {_canonical(k): v for k, v in got.items()}
      bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
      if bad:
        return None, (
          f"fails its integrity check ({len(bad)} of {len(want)} arrays differ "
          f"from what was saved, e.g. {bad[0]})"
        )
    else:
      log.warning("checkpoint step %d has no integrity record; checking finiteness only", step)
    if not bool(all_finite(state)):
      return None, "holds non-finite numbers"
    return (state, data_state), None

  def _quarantine(self, step: int, problem: str) -> None:
    """Move a bad checkpoint aside (process 0) and reopen the manager without it."""
    if jax.process_index() == 0:
      os.makedirs(self.quarantine_dir, exist_ok=True)
      dest = os.path.join(self.quarantine_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
      shutil.move(os.path.join(self.dir, str(step)), dest)
      if os.path.exists(self._record(step)):
        shutil.move(self._record(step), dest + ".integrity.json")
      print(
        f"warning: checkpoint step {step} {problem}; moved to {dest}", file=sys.stderr, flush=True
      )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"wgqa_jax: quarantined {step}")
    self.mngr.close()
    self.mngr = self._manager()

  def prune_records(self) -> None:
    """Drop integrity records of checkpoints orbax no longer keeps."""
    if jax.process_index() != 0 or not os.path.isdir(self.integrity_dir):
      return
    kept = set(self.steps())
    for name in os.listdir(self.integrity_dir):
      stem = name.split(".")[0]
      if stem.isdigit() and int(stem) not in kept:
        os.remove(os.path.join(self.integrity_dir, name))

  def last_good(self) -> int | None:
    """The newest step saved whole (its integrity record written), once saves finished."""
    good = [s for s in self.mngr.all_steps() if os.path.exists(self._record(s))]
    return max(good) if good else None

  def close(self) -> None:
    if getattr(self, "failed", False):  # a failed save: nothing more to finish or prune
      return
    with self._reporting_disk_full(getattr(self, "_saving", None)):
      self.mngr.wait_until_finished()
      self.mngr.check_for_errors()
    self.prune_records()
    self.mngr.close()
