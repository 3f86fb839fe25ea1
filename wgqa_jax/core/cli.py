"""The one convention of every entry point (wgqa_jax/tools/: train, evaluate, convert, sweep,
pareto, analysis, plan, prepare_corpus, local_tfds, config_docs) and of the benchmarks.

- absl flags, `--name=value`; configs as `--config=FILE[:ARG]` plus `--config.section.key=value`.
- Each module owns its flag set (so train, sweep and evaluate can be imported together), and
  `main(argv) -> int` is callable from Python with a list of flags; errors raise there.
- From the command line (`run`), a user error (wgqa_jax.core.errors.UserError, or a bad flag)
  prints one line and exits 2, a run that stops for a reason it explains (`Failure`: diverged,
  ...) prints that line and exits with its code; `--debug` shows the traceback instead. Any
  other exception is a bug: exit 1 with its traceback. Exit codes: 0 done, 1 crash (a bug:
  traceback), 2 user error, 3 diverged, 74 disk full (free space, rerun to resume), 75
  preempted after saving a checkpoint (rerun to resume).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable

from absl import flags

from wgqa_jax.core.errors import EXIT_DISK_FULL, EXIT_USER_ERROR, Failure, UserError, is_disk_full

USER_ERRORS = (UserError, flags.Error)


def flag_set() -> flags.FlagValues:
  """A fresh flag set with the flags every entry point has."""
  fv = flags.FlagValues()
  flags.DEFINE_bool("debug", False, "show the traceback of a user error", flag_values=fv)
  return fv


def parse(fv: flags.FlagValues, argv: list[str] | None, prog: str) -> flags.FlagValues:
  """Parse argv (without the program name; None: sys.argv[1:]) into fv, afresh each call."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--help" in argv or "-h" in argv:
    command = f"python {prog}" if prog.endswith(".py") else f"python -m {prog}"
    print(f"usage: {command} [flags]\n\n{fv.get_help()}")
    raise SystemExit(0)
  fv.unparse_flags()
  for name in [n for n in fv if "." in n]:  # a previous call's --config.KEY override flags
    delattr(fv, name)
  # ml_collections' config flags find their --config.KEY overrides in sys.argv, not in the list
  # being parsed: show them this argv while parsing.
  saved, sys.argv = sys.argv, [prog] + argv
  try:
    rest = fv(sys.argv)
  except (AttributeError, TypeError) as e:  # a config key that does not exist, a bad value
    text = str(e).replace("\\n", " ").replace("\\", "").replace("'", "")
    raise UserError(f"bad --config override: {' '.join(text.split())}") from e
  except OSError as e:  # a config file that does not load, met while applying an override
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    name = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    raise UserError(f"--config={name}: {lines[-1]}") from e
  except flags.Error as e:  # get_config(ARG) raised: absl quotes its whole traceback
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if len(lines) > 1 and any(l.startswith("Traceback") for l in lines):
      raise UserError(f"{lines[0].removeprefix('flag ').split(': Error')[0]}: {lines[-1]}") from e
    raise
  finally:
    sys.argv = saved
  for name in list(fv):
    flag = fv[name]
    if hasattr(flag, "config_filename") and flag.value is not None:
      try:  # ml_collections defers a config file that failed to load to the first access
        flag.value.keys()
      except OSError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        raise UserError(f"--{name}={flag.config_filename}: {lines[-1]}") from e
  if len(rest) > 1:
    raise UserError(f"unexpected arguments: {rest[1:]} (flags are --name=value)")
  return fv


def first_line(e: BaseException, limit: int = 200) -> str:
  """A library error's first non-empty line, cut to `limit` characters (its type's name when
  it has no message): what a one-line user error quotes of it."""
  lines = str(e).strip().splitlines()
  return lines[0][:limit] if lines else type(e).__name__


def run(main: Callable[[list[str] | None], int], fv: flags.FlagValues) -> None:
  """`if __name__ == "__main__": cli.run(main, FLAGS)`: exit with main's code, or 2 and one
  line on a user error."""
  try:
    code = main(None)
  except (Failure, *USER_ERRORS) as e:
    if fv.is_parsed() and fv["debug"].value:
      raise
    print(f"{getattr(e, 'label', 'error')}: {e}", file=sys.stderr)
    code = e.exit_code if isinstance(e, Failure) else EXIT_USER_ERROR
    if getattr(e, "exit_now", False):  # library threads that cannot finish would print
      sys.stdout.flush()  # tracebacks while the interpreter shuts down
      sys.stderr.flush()
      os._exit(code)
    sys.exit(code)
  except OSError as e:  # a full disk, or a place the user named that cannot be written
    if fv.is_parsed() and fv["debug"].value:
      raise
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
      print(f"error: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    print(
      f"disk full: writing {e.filename or 'a file'} failed ({e.strerror}); free space and "
      f"run the same command again",
      file=sys.stderr,
    )
    sys.exit(EXIT_DISK_FULL)
  sys.exit(code or 0)


class _DropDiskFullLogs(logging.Filter):
  """orbax logs each failed write of an asynchronous save with its traceback (hundreds of
  lines); the run's DiskFull says it in one."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (
      is_disk_full(Exception(record.getMessage())) or (error is not None and is_disk_full(error))
    )


def quiet_disk_full_logs() -> None:
  """For a command that writes checkpoints: drop the library noise of a full disk (the run
  reports it itself, once): orbax's logged tracebacks, and tensorstore callbacks that report
  "Event loop is closed" when a failed save's event loop is gone. Process-wide: only a command
  line calls it."""
  from absl import logging as absl_logging

  drop = _DropDiskFullLogs()
  for handler in [absl_logging.get_absl_handler(), *logging.getLogger().handlers]:
    handler.addFilter(drop)
  logging.getLogger("asyncio").addFilter(drop)
  closed_loop = lambda e: isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
  previous, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if not closed_loop(value):
      previous(kind, value, tb)

  def unraisablehook(unraisable):  # what a C callback reports (no "Exception ignored" line)
    if not closed_loop(unraisable.exc_value):
      previous_unraisable(unraisable)

  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
