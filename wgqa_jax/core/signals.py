"""Preemption signals caught from a command's first moment.

`python -m wgqa_jax.train` calls `catch_early()` before any heavy import (JAX takes seconds to
import), so a SIGTERM / SIGINT during start-up is recorded instead of killing the process; the
trainer's Preemption then stops the run cleanly (exit 75) at its next check. This module imports
only the standard library."""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_pending: list[int] = []


def catch_early() -> None:
  for s in SIGNALS:
    signal.signal(s, lambda signum, _: _pending.append(signum))


def pending() -> int | None:
  """The first signal caught before the run took over its handling, if any."""
  return _pending[0] if _pending else None
