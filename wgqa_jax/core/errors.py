"""The package's errors, by who has to act on them.

- `UserError`: input a user gave cannot be used (a bad flag or config value, a missing or
  damaged file, a checkpoint that does not fit). Every entry point prints its one line and
  exits 2 (wgqa_jax.core.cli.run). It is a ValueError, so Python callers may catch it as one;
  `MissingInput` (a FileNotFoundError too) and `MissingDependency` (an ImportError too) say
  which kind. Where a library's own error means bad input, the code that reads the input
  converts it to one of these.
- `Failure`: a run that stopped for a reason it states in one line, with its own exit code
  (diverged, a full disk, preempted).
- Anything else is a bug: exit 1 with its traceback.
"""

from __future__ import annotations

import errno
import re

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_DATA_ERROR = 65  # EX_DATAERR: training data found damaged mid-run; prepare it again
EXIT_DISK_FULL = 74  # EX_IOERR: no space left; free some and rerun to resume
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved, try again


class UserError(ValueError):
  """Input that cannot be used; the message says which and what to do instead."""


class MissingInput(UserError, FileNotFoundError):
  """A file, directory or dataset the user named is not there."""


class MissingDependency(UserError, ImportError):
  """The input needs an optional package that is not installed."""


class DamagedData(UserError):
  """Data that was readable when the run opened it and is not now (a damaged shard or
  record). At start-up it is a user error; met mid-run, the trainer stops as it does on a full
  disk (wgqa_jax.training.loop_parts.DataDamaged), naming its last good checkpoint."""

  @classmethod
  def within(cls, e: BaseException) -> DamagedData | None:
    """The DamagedData an error is, or carries in its text (a worker process's error that a
    library re-raised as another type: "INTERNAL: ValueError: <our message>")."""
    if isinstance(e, cls):
      return e
    m = re.search(r"([^\n]* is damaged \([^\n]*\); prepare (?:it|the dataset) again)", str(e))
    if m is None:
      return None
    text = m.group(1)
    while re.match(r"[A-Za-z_]\w*: ", text):  # status and exception names put in front
      text = text.split(": ", 1)[1]
    return cls(text)


class Failure(Exception):
  """A run that stopped for a reason it can state in one line, with its own exit code."""

  exit_code = 1
  label = "error"
  exit_now = False  # library threads that cannot finish would print tracebacks at shutdown


def is_disk_full(e: BaseException) -> bool:
  """Whether an error (ours, the OS's, or a library's wrapping of it) is a full disk or quota."""
  text = str(e)
  return (
    getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    or "No space left on device" in text
    or "os_error_code='28'" in text
    or "Disk quota exceeded" in text
  )
