"""python -m wgqa_jax.pareto: quality against KV-cache bytes for every conversion method at
every KV budget, from one MHA checkpoint (the library: wgqa_jax.lab.pareto).

    python -m wgqa_jax.pareto --config=configs/llama_uptrain.py:tiny \
        --config.model.init_from=MHA_RUN/final --config.data.tokenizer=MHA_RUN/spm.model \
        --methods=mean,wgqa,aligned,svd --budgets=1/2,1/4,1/8 --steps=100 --out=/tmp/pareto
    python -m wgqa_jax.pareto --config=configs/tiny.py --pretrain_steps=1000 --out=/tmp/pareto_t5

--config and --config.SECTION.KEY=VALUE overrides work as in wgqa_jax.train and apply to every
run. OUT/results.md, results.json and pareto.png: quality against KV-cache bytes per token, a
column per method, the points off the frontier marked. Re-running resumes.

--eval_tasks=TASKS scores every point on lm-evaluation-harness tasks too (wgqa_jax.lab.harness),
right after conversion and after uptraining: the standard ones download their datasets
(internet), local ones are task YAMLs in --eval_include_path (examples/harness_tasks/).
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.lab import pareto

FLAGS = cli.flag_set()
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "training config file", lock_config=True, flag_values=FLAGS
)
flags.DEFINE_list("methods", "mean,wgqa,aligned,svd", "conversion methods", flag_values=FLAGS)
flags.DEFINE_list(
  "budgets", "1/2,1/4,1/8", "KV-head budgets, shares of the MHA heads", flag_values=FLAGS
)
flags.DEFINE_integer(
  "steps", 100, "uptraining steps per point (>= 1; step 0 is the conversion)", flag_values=FLAGS
)
flags.DEFINE_integer(
  "pretrain_steps",
  0,
  "train a random MHA this long first (0: use config.model.init_from)",
  flag_values=FLAGS,
)
flags.DEFINE_string("out", None, "results directory", flag_values=FLAGS)
flags.DEFINE_list(
  "eval_tasks",
  [],
  "lm-evaluation-harness tasks scored at conversion and after uptraining, beside the loss",
  flag_values=FLAGS,
)
flags.DEFINE_string(
  "eval_include_path", None, "a folder of the harness's task YAMLs (local tasks)", flag_values=FLAGS
)
flags.DEFINE_integer("eval_limit", None, "examples per task (default: all)", flag_values=FLAGS)
flags.DEFINE_integer(
  "eval_max_length",
  None,
  "longest context the tasks score, cut from the left (default: the runs' training length)",
  flag_values=FLAGS,
)


def main(argv: list[str] | None = None) -> int:
  args = cli.parse(FLAGS, argv, "wgqa_jax.pareto")
  if _CONFIG.value is None:
    raise UserError("pass --config=FILE[:ARG]")
  if not args.out:
    raise UserError("pass --out=DIR")
  command = " ".join(argv if argv is not None else sys.argv[1:])
  print(
    pareto.run(
      _CONFIG.value,
      [m.strip() for m in args.methods if m.strip()],
      [b.strip() for b in args.budgets if b.strip()],
      args.steps,
      args.pretrain_steps,
      args.out,
      command,
      eval_tasks=[t.strip() for t in args.eval_tasks if t.strip()],
      eval_include_path=args.eval_include_path,
      eval_limit=args.eval_limit,
      eval_max_length=args.eval_max_length,
    )
  )
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
