"""The one convention of every entry point (train, evaluate, convert, sweep, analysis, plan,
prepare_corpus, local_tfds).

- absl flags, `--name=value`; configs as `--config=FILE[:ARG]` plus `--config.section.key=value`.
- Each module owns its flag set (so train, sweep and evaluate can be imported together), and
  `main(argv) -> int` is callable from Python with a list of flags; errors raise there.
- From the command line (`run`), a user error prints one line and exits 2, a run that stops for
  a reason it explains (`Failure`: diverged, ...) prints that line and exits with its code;
  `--debug` shows the traceback instead. Exit codes: 0 done, 1 crash (a bug: traceback),
  2 user error, 3 diverged, 74 disk full (free space, rerun to resume), 75 preempted after
  saving a checkpoint (rerun to resume).
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable

from absl import flags

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, ImportError, flags.Error)
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_DISK_FULL = 74  # EX_IOERR: no space left; free some and rerun to resume
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved, try again


class Failure(Exception):
  """A run that stopped for a reason it can state in one line, with its own exit code."""
  exit_code = 1
  label = "error"


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
    raise ValueError(f"bad --config override: {' '.join(text.split())}") from e
  except OSError as e:  # a config file that does not load, met while applying an override
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    name = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    raise ValueError(f"--config={name}: {lines[-1]}") from e
  except flags.Error as e:  # get_config(ARG) raised: absl quotes its whole traceback
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if len(lines) > 1 and any(l.startswith("Traceback") for l in lines):
      raise ValueError(f"{lines[0].removeprefix('flag ').split(': Error')[0]}: "
                       f"{lines[-1]}") from e
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
        raise ValueError(f"--{name}={flag.config_filename}: {lines[-1]}") from e
  if len(rest) > 1:
    raise ValueError(f"unexpected arguments: {rest[1:]} (flags are --name=value)")
  return fv


def first_line(e: BaseException, limit: int = 200) -> str:
  """A library error's first non-empty line, cut to `limit` characters (its type's name when
  it has no message): what a one-line user error quotes of it."""
  lines = str(e).strip().splitlines()
  return lines[0][:limit] if lines else type(e).__name__


def _message(e: BaseException) -> str:
  return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def run(main: Callable[[list[str] | None], int], fv: flags.FlagValues) -> None:
  """`if __name__ == "__main__": cli.run(main, FLAGS)`: exit with main's code, or 2 and one
  line on a user error."""
  try:
    code = main(None)
  except (Failure, *USER_ERRORS) as e:
    if fv.is_parsed() and fv["debug"].value:
      raise
    print(f"{getattr(e, 'label', 'error')}: {_message(e)}", file=sys.stderr)
    code = e.exit_code if isinstance(e, Failure) else EXIT_USER_ERROR
    if getattr(e, "exit_now", False):  # library threads that cannot finish would print
      sys.stdout.flush()               # tracebacks while the interpreter shuts down
      sys.stderr.flush()
      os._exit(code)
    sys.exit(code)
  except OSError as e:  # only a full disk (or quota) is the machine's state, not a bug
    if e.errno not in (errno.ENOSPC, errno.EDQUOT) or (fv.is_parsed() and fv["debug"].value):
      raise
    print(f"disk full: writing {e.filename or 'a file'} failed ({e.strerror}); free space and "
          f"run the same command again", file=sys.stderr)
    sys.exit(EXIT_DISK_FULL)
  sys.exit(code or 0)
