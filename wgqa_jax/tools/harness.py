"""python -m wgqa_jax.harness: lm-evaluation-harness's own command line (`lm_eval`, every option
of it), with our model registered as `--model wgqa_jax` (the library: wgqa_jax.lab.harness).

    python -m wgqa_jax.harness --model wgqa_jax --model_args checkpoint=workdirs/tiny \\
        --tasks wgqa_mc,wgqa_ppl --include_path examples/harness_tasks --output_path out/
    python -m wgqa_jax.harness --model wgqa_jax --model_args checkpoint=DIR,dtype=bfloat16 \\
        --tasks hellaswag,arc_easy --batch_size 16        # downloads the datasets

Its arguments are the harness's (argparse: `--tasks a,b`, `--model_args k=v,k=v`); the bare
`lm_eval` command cannot be used because lm-eval 0.4 finds models only in its own table (no
plugin entry points). model_args: checkpoint (a training workdir, params dir or HF directory),
tokenizer, max_length, max_gen_toks, fold, dtype, seed. Bad input (an unknown task or model
argument, a checkpoint that is missing or damaged) prints one line and exits 2.
"""

from __future__ import annotations

import sys

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError

FLAGS = cli.flag_set()  # the shared convention's --debug; the rest are the harness's
PROG = "python -m wgqa_jax.harness"


def main(argv: list[str] | None = None) -> int:
  from lm_eval._cli import HarnessCLI

  from wgqa_jax.lab import harness  # registers --model wgqa_jax

  argv = sys.argv[1:] if argv is None else list(argv)
  for flag, value in zip(argv, argv[1:]):
    if flag == "--include_path":
      harness.check_task_folder(value, flag)
  saved, sys.argv = sys.argv, [PROG, *argv]  # HarnessCLI reads sys.argv
  try:
    parser = HarnessCLI()
    args = parser.parse_args()
    parser.execute(args)
  except (KeyError, ValueError, FileNotFoundError) as e:
    if isinstance(e, UserError):
      raise
    # the harness's own refusals of bad input (an unknown task or model, a bad argument), and
    # a task's data files that are not there
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # not its repr
    raise UserError(text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__) from e
  finally:
    sys.argv = saved
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
