"""Make the papers' claims checkable from a run's workdir (the command line:
wgqa_jax/tools/analysis.py).

- WGQA weights: distribution of the learned K/V head weights at every kept checkpoint (PNG, like
  Fig. 3 of the WGQA paper) and a two-sided one-sample t-test of their mean against 0.5 (the mean
  heuristic of GQA with two heads per group) at each step.
- Curves: an eval metric (default: ROUGE-Lsum, BLEU or the held-out loss, the first every run
  logged) against step for several runs on one plot.
"""

from __future__ import annotations

import os

import numpy as np

from wgqa_jax.core import workdir as workdir_lib
from wgqa_jax.core.errors import MissingInput, UserError
from wgqa_jax.grouping import variants
from wgqa_jax.store import checkpoints


def weights_by_step(workdir: str) -> dict[int, np.ndarray]:
  """{step: flat WGQA weights} for every checkpoint kept in workdir/checkpoints that verifies
  (wgqa_jax.store.checkpoints; one that does not is skipped with a warning, and left where it is).
  """
  workdir = os.path.abspath(workdir)
  if not checkpoints.has_checkpoints(workdir):
    raise MissingInput(f"{workdir} has no checkpoints")
  ckpts = checkpoints.Checkpoints(workdir, keep=None)
  out = {}
  for step in ckpts.steps():
    restored, problem = ckpts.try_restore(step)
    if problem:
      print(f"warning: checkpoint step {step} {problem}; skipped")
      continue
    out[int(step)] = variants.weights_flat(restored[0]["params"])
  ckpts.mngr.close()
  return out


def ttest(weights: np.ndarray, popmean: float = 0.5) -> dict[str, float]:
  """Two-sided one-sample t-test of the weights' mean against popmean."""
  from scipy import stats

  t, p = stats.ttest_1samp(np.asarray(weights, np.float64), popmean)
  return {
    "n": int(len(weights)),
    "mean": float(np.mean(weights)),
    "std": float(np.std(weights)),
    "t": float(t),
    "p_value": float(p),
    "popmean": popmean,
  }


def plot_weight_distributions(by_step: dict[int, np.ndarray], out_png: str, title: str = "") -> str:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = sorted(by_step)
  fig, ax = plt.subplots(figsize=(7, 4))
  lo = min(float(by_step[s].min()) for s in steps)
  hi = max(float(by_step[s].max()) for s in steps)
  n = min(len(v) for v in by_step.values())
  bins = np.linspace(lo, hi, int(np.clip(n // 3, 8, 40)))
  cmap = plt.get_cmap("viridis")
  for i, s in enumerate(steps):
    ax.hist(
      by_step[s],
      bins=bins,
      histtype="step",
      lw=2,
      density=True,
      color=cmap(i / max(len(steps) - 1, 1)),
      label=f"step {s}",
    )
  ax.axvline(0.5, color="k", ls="--", lw=1, label="0.5 (GQA mean)")
  ax.set_xlabel("learned WGQA weight (K and V heads)")
  ax.set_ylabel("density")
  ax.set_title(title or "WGQA weight distribution over uptraining")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_png, dpi=120)
  plt.close(fig)
  return out_png


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, workdir_lib.METRICS)
  if not os.path.exists(path):
    raise MissingInput(f"{workdir} has no {workdir_lib.METRICS}")
  return workdir_lib.read_jsonl(path)


def plot_curves(runs: dict[str, str], metric: str, out_png: str) -> str:
  """One line per run: `metric` (e.g. eval/rougeLsum, train/loss) against step."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for name, workdir in runs.items():
    pts = sorted((r["step"], r[metric]) for r in read_metrics(workdir) if metric in r)
    if pts:
      ax.plot(*zip(*pts), marker="o", ms=3, label=name)
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_png, dpi=120)
  plt.close(fig)
  return out_png


CURVE_METRICS = ("eval/rougeLsum", "eval/bleu", "eval/loss")  # the first every run has


def curve_metric(runs: dict[str, str], metric: str | None) -> str:
  """The metric of the curves: the one asked for, which every run must have logged, or the
  first of CURVE_METRICS every run has (a pretraining run logs only the held-out loss)."""
  logged = {name: {k for r in read_metrics(w) for k in r} for name, w in runs.items()}
  if metric is None:
    common = [m for m in CURVE_METRICS if all(m in keys for keys in logged.values())]
    if not common:
      evals = {n: sorted(k for k in keys if k.startswith("eval/")) for n, keys in logged.items()}
      raise UserError(
        f"the runs share none of {', '.join(CURVE_METRICS)}: pass --metric (what each logged: "
        f"{evals})"
      )
    return common[0]
  for name, keys in logged.items():
    if metric not in keys:
      raise UserError(
        f"{runs[name]} logged no {metric}; its metrics: "
        f"{', '.join(sorted(k for k in keys if '/' in k))}"
      )
  return metric


def analyse(workdirs: list[str], out_dir: str, metric: str | None = None) -> dict:
  names = {}
  for w in workdirs:
    name = os.path.basename(os.path.normpath(w))
    if name in names:
      raise UserError(
        f"--workdir {names[name]} and {w} share the name {name!r}, which labels their curves "
        f"and plots: name them apart"
      )
    names[name] = w
  metric = curve_metric(names, metric)
  os.makedirs(out_dir, exist_ok=True)
  report: dict = {
    "metric": metric,
    "curves": plot_curves(names, metric, os.path.join(out_dir, "curves.png")),
    "wgqa": {},
  }
  for name, w in names.items():
    if not os.path.isdir(os.path.join(w, workdir_lib.CHECKPOINTS)):
      continue
    by_step = weights_by_step(w)
    if not by_step or not len(next(iter(by_step.values()))):
      continue
    png = plot_weight_distributions(
      by_step,
      os.path.join(out_dir, f"wgqa_weights_{name}.png"),
      f"{name}: learned K/V head weights",
    )
    report["wgqa"][name] = {"plot": png, "ttest_vs_0.5": {s: ttest(v) for s, v in by_step.items()}}
  workdir_lib.write_json(os.path.join(out_dir, "analysis.json"), report, indent=1)
  return report
