"""A training workdir: the names of its files (this module is their one owner), the small files
written so that a kill at any moment leaves them readable, and the lock that keeps one writer
per workdir.

- `Lock`: an exclusive flock on WORKDIR/.lock, held while a run writes; a second run refuses in
  one line naming the holder's PID and host. The kernel drops it when the holder dies (kill -9
  included), so a stale lock never blocks a rerun.
- `write_json`: a whole file via a temporary sibling and a rename.
- `read_jsonl`: the rows of metrics.jsonl, dropping (with a warning) a trailing line a kill cut.
- `read_json`: a small JSON file, None (with a warning) when it is empty or torn.
- `writing_dir`: an output directory written beside its target and swapped in whole, by one
  process at a time (`one_writer`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time

from tqdm import tqdm

from wgqa_jax.core.errors import UserError

# ---- what a workdir holds ----
RUN_CONFIG = "config.json"  # the training config the run started with (resume checks it)
METRICS = "metrics.jsonl"  # one JSON row per logged step and per eval
TENSORBOARD = "tb"  # the same scalars for TensorBoard
CHECKPOINTS = "checkpoints"  # orbax: <step>/state (step, params, opt_state), <step>/data
INTEGRITY = "integrity"  # <step>.json: each checkpoint's fingerprint and data position
QUARANTINE = "checkpoints_quarantine"  # checkpoints that failed to verify, moved aside
BEST = "best"  # params dir at the best eval metric so far
BEST_RECORD = "best_metric.json"  # which step best/ is, and its value
FINAL = "final"  # params dir of the last step
TOKENIZER_RECORD = "tokenizer.json"  # the tokenizer's fingerprint (resume checks it)
DATA_RECORD = "data.json"  # the train and validation data's fingerprints (resume checks them)
SPM_MODEL = "spm.model"  # a sentencepiece vocabulary trained by the run
CALIBRATION = "calibration.npz"  # the MHA model's calibration statistics (calibrated variants)
EVALS = "evals"  # evaluate's results of best/ and final/: <params>_<dataset>_<split>.json
KV_ALLOCATION = "kv_allocation.json"  # layer_budget=proxy: each module's KV heads, kept for resumes
LOCK_FILE = ".lock"
# every name above: a run writes them, so none may be a symbolic link (its target would be)
OWNED = (
  RUN_CONFIG,
  METRICS,
  TENSORBOARD,
  CHECKPOINTS,
  INTEGRITY,
  QUARANTINE,
  BEST,
  BEST_RECORD,
  FINAL,
  TOKENIZER_RECORD,
  DATA_RECORD,
  SPM_MODEL,
  CALIBRATION,
  EVALS,
  KV_ALLOCATION,
  LOCK_FILE,
)
# what marks a directory as a training workdir, written or not yet with params (not
# tokenizer.json or config.json: a HF checkpoint has files of those names too)
MARKERS = (METRICS, CHECKPOINTS, LOCK_FILE)


def refuse_links(workdir: str) -> None:
  """A workdir whose own files are symbolic links is refused: writing them would write where
  they point (another run's files, or anything)."""
  for name in OWNED:
    path = os.path.join(workdir, name)
    if os.path.islink(path):
      raise UserError(
        f"{path} is a symbolic link (to {os.readlink(path)}): a run writes its workdir's own "
        f"files, never through links; remove it or pass another --workdir"
      )


def is_workdir(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, name)) for name in MARKERS)


def warn(msg: str) -> None:
  tqdm.write(f"warning: {msg}")


def _flock_or_refuse(fd: int, refusal) -> None:
  """An exclusive flock on fd, or (closing fd) a UserError of refusal(the holder's line)."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
    os.close(fd)
    raise UserError(refusal(holder)) from None


def _write_holder(fd: int, since: str = "") -> None:
  """Who holds the lock, for the next one who tries."""
  os.ftruncate(fd, 0)
  os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}{since}".encode())


class Lock:
  """Exclusive ownership of a workdir; `acquire` creates the workdir if needed."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def acquire(self) -> None:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    try:  # never through a link: truncating it would truncate what it points to
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
      if e.errno != errno.ELOOP:
        raise
      raise UserError(f"{self.path} is a symbolic link; remove it") from None
    _flock_or_refuse(
      fd,
      lambda holder: (
        f"{os.path.dirname(self.path)} is in use by {holder}: one run writes a "
        f"workdir at a time (wait for it, stop it, or pass another --workdir)"
      ),
    )
    _write_holder(fd, f" (since {time.strftime('%Y-%m-%d %H:%M:%S')})")
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing drops the flock
      self._fd = None


def write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj, indent: int | None = None) -> None:
  write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str):
  """The file's JSON, or None when it is missing, empty or torn (a warning says which)."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError:
    warn(f"{path} is empty or torn (a run was killed while writing it); ignoring it")
    return None


def read_jsonl(path: str) -> list[dict]:
  """metrics.jsonl's rows. A last line a kill cut short is dropped with a warning; a bad line
  elsewhere is damage, not a torn write, and an error naming the line."""
  with open(path) as f:
    lines = f.read().split("\n")
  rows = []
  for n, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError:
      if all(not rest.strip() for rest in lines[n:]):
        warn(f"{path}: dropped its last line, cut short by a kill: {line[:60]!r}")
        continue
      raise UserError(f"{path}:{n} is not a JSON line; the file is damaged") from None
  return rows


@contextlib.contextmanager
def one_writer(path: str, what: str):
  """`with one_writer(path + ".lock", "writing X"):` held by one process at a time; another
  refuses in one line naming the holder. The lock file is removed on exit (a kill leaves it,
  unlocked: the next writer takes it)."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    _flock_or_refuse(fd, lambda holder: f"{holder} is {what}: wait for it or stop it")
    try:  # the file we locked may have been removed by the holder before us: lock the new one
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  try:
    _write_holder(fd)
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)  # while still locked: a waiter then finds it gone and retries
    os.close(fd)


@contextlib.contextmanager
def writing_dir(out_dir: str):
  """`with writing_dir(out) as tmp:` write into tmp; on success tmp replaces `out` (its old
  contents go whole), on failure `out` is left as it was. One process writes `out` at a time
  (a second refuses); leftovers of a killed write are removed first."""
  out_dir = os.path.abspath(out_dir)
  parent, name = os.path.dirname(out_dir), os.path.basename(out_dir)
  os.makedirs(parent, exist_ok=True)
  with one_writer(os.path.join(parent, f".{name}.lock"), f"writing {out_dir}"):
    for stale in os.listdir(parent):
      if stale.startswith(f".{name}.tmp-"):
        shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    os.makedirs(tmp)
    try:
      yield tmp
      if os.path.exists(out_dir):
        old = tmp + ".old"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        # a symbolic link named `out` is replaced, not what it points to
        shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)
      else:
        os.rename(tmp, out_dir)
    finally:
      if os.path.exists(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
