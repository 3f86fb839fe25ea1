"""The small named parts of the train loop: the metric writer, best/, the NaN guard's
give-up rule, preemption, and the two ways a run stops early (Diverged, Preempted)."""

from __future__ import annotations

import json
import os
import signal

from wgqa_jax.core import signals, workdir as workdir_lib
from wgqa_jax.core.errors import (
  EXIT_DATA_ERROR,
  EXIT_DIVERGED,
  EXIT_PREEMPTED,
  Failure,
  is_disk_full,
)
from wgqa_jax.core.numerics import all_finite
from wgqa_jax.core.processes import is_main_process, say
from wgqa_jax.store import checkpoints, params_io
from wgqa_jax.training.evaluation import LOWER_IS_BETTER


class Diverged(Failure):
  """Too many consecutive steps were non-finite; the last good checkpoint is left as it was."""

  exit_code = EXIT_DIVERGED


class DataDamaged(Failure):
  """Training or validation data turned out damaged mid-run (core.errors.DamagedData): the run
  stops after its pending saves, naming the last good checkpoint; rerunning once the data is
  prepared again resumes."""

  exit_code = EXIT_DATA_ERROR
  label = "damaged data"


class Preempted(Failure):
  """SIGTERM / SIGINT (or stop_after) stopped the run after it saved a checkpoint; running the
  same command again resumes. `metrics`: the last train and eval metrics, as train() returns."""

  exit_code = EXIT_PREEMPTED
  label = "preempted"

  def __init__(self, message: str, metrics: dict):
    super().__init__(message)
    self.metrics = metrics


class MetricWriter:
  """metrics.jsonl + TensorBoard scalars, written by process 0. Rows past `start` (written
  before a kill, replayed by the resumed run) are dropped, so each step appears once."""

  def __init__(self, workdir: str, start: int):
    self.path = os.path.join(workdir, workdir_lib.METRICS)
    self.tb = None
    # step -> its eval row, on every process (a finished run is not evaluated again: all
    # processes must agree, the eval is a collective)
    rows = workdir_lib.read_jsonl(self.path) if os.path.exists(self.path) else []
    rows = [r for r in rows if r["step"] <= start]
    self.evals = {r["step"]: r for r in rows if "eval/loss" in r}
    if is_main_process():
      if os.path.exists(self.path):
        with open(self.path + ".tmp", "w") as f:
          f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(self.path + ".tmp", self.path)
      from tensorboardX import SummaryWriter

      self.tb = SummaryWriter(os.path.join(workdir, workdir_lib.TENSORBOARD))

  def write(self, step: int, scalars: dict[str, float], objective: str | None = None) -> None:
    """objective: named in the JSONL row (eval rows: what the loss is of)."""
    if self.tb is None:
      return
    with open(self.path, "a") as f:
      f.write(
        json.dumps({"step": step, **({"objective": objective} if objective else {}), **scalars})
        + "\n"
      )
    for k, v in scalars.items():
      self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


class BestTracker:
  """Keeps best/ (a params dir) at the best value of one eval metric; survives restarts."""

  def __init__(self, workdir: str, metric: str, generation_settings: dict):
    self.dir, self.metric = os.path.join(workdir, workdir_lib.BEST), metric
    self.generation_settings = generation_settings
    self.record = os.path.join(workdir, workdir_lib.BEST_RECORD)
    # stored and compared as "higher is better": a loss is kept negated
    self.sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    self.value = -float("inf")
    record = workdir_lib.read_json(self.record)
    if record is not None:
      self.value = self.sign * record["value"]

  def update(self, step: int, result: dict, params, cfg) -> None:
    value = result.get(f"eval/{self.metric}")
    if value is None or self.sign * value <= self.value or not is_main_process():
      return
    if not bool(all_finite(params)):  # unreachable behind the NaN guard; never
      say(f"warning: params at step {step} are not finite; best/ left as it was")
      return
    self.value = self.sign * value
    params_io.save(params, cfg, self.dir, self.generation_settings)
    workdir_lib.write_json(self.record, {"step": step, "metric": self.metric, "value": value})


class SkipGuard:
  """Reports each step the NaN guard skipped as it happens; after more than `limit` in a row
  the run stops as diverged."""

  def __init__(self, limit: int):
    self.limit, self.run = limit, 0

  def observe(self, step: int, skipped, broken, ckpts: checkpoints.Checkpoints) -> None:
    if broken:  # finite loss and gradients, yet a non-finite update: nothing to skip back to
      good = max((s for s in ckpts.steps() if s < step), default=None)
      raise Diverged(
        f"diverged: the update of step {step} made params or optimizer state non-finite "
        f"though its loss and gradients were finite"
        + (f"; the last good checkpoint is step {good} in {ckpts.dir}" if good else "")
        + " (a resume skips later ones, which do not verify). Lower optim.learning_rate and "
        "start again with another --workdir."
      )
    if not skipped:
      self.run = 0
      return
    self.run += 1
    say(f"step {step} skipped: non-finite loss, gradients or update ({self.run} in a row)")
    if self.run > self.limit:
      good = max(ckpts.steps(), default=None)
      raise Diverged(
        f"diverged: {self.run} steps in a row (to step {step}) were non-finite and skipped; "
        f"params and optimizer state are those of step {step - self.run}"
        + (f"; the last good checkpoint is step {good} in {ckpts.dir}" if good else "")
        + ". Lower optim.learning_rate (or raise optim.max_skipped_steps) and start again "
        "with another --workdir."
      )


class Preemption:
  """SIGTERM/SIGINT set a flag (the loop saves, then stops) instead of killing the process.
  Installed for the whole run: a signal during start-up (wgqa_jax.core.signals caught it
  before the imports) stops it at the next check, before any step (nothing to save: the
  rerun starts where this one would have)."""

  def __init__(self):
    self.signal = signals.pending()

  def __enter__(self):
    self._old = {s: signal.signal(s, self._on_signal) for s in signals.SIGNALS}
    return self

  def check_startup(self, workdir: str) -> None:
    if self.signal:
      raise Preempted(
        f"signal {self.signal} during start-up, before any step: nothing to "
        f"save; run the same command again to start ({workdir})",
        {},
      )

  def _on_signal(self, signum, _):
    self.signal = signum

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)


def restore_or_init(ckpts: checkpoints.Checkpoints, state, shardings):
  """(state, data state) of the newest good checkpoint restored onto `shardings` (any mesh),
  else (`state` as it is, None)."""
  restored = ckpts.restore_latest_good(state, shardings)
  if restored is None:
    return state, None
  say(f"resumed from step {int(restored[0]['step'])}")
  return restored


def close_unless_disk_full(close) -> None:
  """close(), where a full disk (the buffered events it would write are lost) is no error."""
  try:
    close()
  except OSError as e:
    if not is_disk_full(e):
      raise
