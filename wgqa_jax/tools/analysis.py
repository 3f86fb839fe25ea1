"""python -m wgqa_jax.analysis: make the papers' claims checkable from runs' workdirs (the
library: wgqa_jax.lab.analysis).

    python -m wgqa_jax.analysis --workdir=workdirs/wgqa --workdir=workdirs/gqa --out=analysis/

WGQA weight distributions at every kept checkpoint (PNG, like the WGQA paper's Fig. 3) with a
one-sample t-test of their mean against 0.5, and an eval metric's curves for several runs.
"""

from __future__ import annotations

from absl import flags

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.lab import analysis

FLAGS = cli.flag_set()
flags.DEFINE_multi_string("workdir", [], "a training workdir (repeat)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output directory", flag_values=FLAGS)
flags.DEFINE_string(
  "metric",
  None,
  "metric of the curves (default: eval/rougeLsum, else eval/bleu, else eval/loss: the first "
  "every run logged)",
  flag_values=FLAGS,
)


def main(argv: list[str] | None = None) -> int:
  args = cli.parse(FLAGS, argv, "wgqa_jax.analysis")
  if not args.workdir or not args.out:
    raise UserError("pass --workdir=DIR (repeatable) and --out=DIR")
  report = analysis.analyse(args.workdir, args.out, args.metric)
  print(f"curves ({report['metric']}): {report['curves']}")
  for name, r in report["wgqa"].items():
    print(f"{name}: {r['plot']}")
    for step, t in r["ttest_vs_0.5"].items():
      print(
        f"  step {step}: mean {t['mean']:.4f} (std {t['std']:.4f}, n={t['n']}), "
        f"t={t['t']:.2f}, p={t['p_value']:.3g} vs 0.5"
      )
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
