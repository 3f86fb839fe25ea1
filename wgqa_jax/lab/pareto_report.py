"""The conversion lab's report: tables of held-out loss per KV budget and method (the frontier
marked), the calibration error, other metrics, results.json and pareto.png."""

from __future__ import annotations

import dataclasses
import os

from wgqa_jax.core import workdir as workdir_lib
from wgqa_jax.lab.sweep import describe_data


@dataclasses.dataclass
class Point:
  method: str
  kv_heads: int
  budget: str
  bytes_per_token: int
  at_conversion: dict
  after: dict
  workdir: str
  proxy: float | None = None  # calibration error of the merge, mean over cached modules


def dominated(points: list[Point], key: str) -> set[int]:
  """Indices of the points another point beats: no more bytes, no higher loss, one strictly."""
  out = set()
  for i, p in enumerate(points):
    for q in points:
      better = (
        q.bytes_per_token <= p.bytes_per_token
        and getattr(q, key)["loss"] <= getattr(p, key)["loss"]
      )
      strictly = (
        q.bytes_per_token < p.bytes_per_token or getattr(q, key)["loss"] < getattr(p, key)["loss"]
      )
      if better and strictly:
        out.add(i)
        break
  return out


def table(points: list[Point], methods: list[str], title: str, cell) -> list[str]:
  """Rows: KV budgets (most bytes first); columns: methods; cell(index, point) -> text."""
  cells = {(p.method, p.kv_heads): cell(i, p) for i, p in enumerate(points)}
  rows = sorted({(p.kv_heads, p.budget, p.bytes_per_token) for p in points}, reverse=True)
  lines = [
    f"### {title}",
    "",
    "| KV heads (budget) | bytes / token | " + " | ".join(methods) + " |",
    "|---|---|" + "---|" * len(methods),
  ]
  for g, budget, nbytes in rows:
    lines.append(
      f"| {g} ({budget}) | {nbytes} | " + " | ".join(cells.get((m, g), "") for m in methods) + " |"
    )
  return lines + [""]


def loss_table(points: list[Point], methods: list[str], key: str, title: str) -> list[str]:
  """Held-out loss per budget and method; `*`: on the frontier."""
  off = dominated(points, key)
  return table(
    points,
    methods,
    title,
    lambda i, p: f"{getattr(p, key)['loss']:.4f}" + ("" if i in off else " *"),
  )


def harness_metrics(points: list[Point]) -> list[str]:
  """The lm-evaluation-harness metrics the points were scored on ("TASK:METRIC",
  wgqa_jax.lab.harness.scorer), sorted."""
  return sorted({k for p in points for k in {**p.at_conversion, **p.after} if ":" in k})


def plot(points: list[Point], out_png: str, steps: int) -> None:
  """Held-out loss against KV bytes (the frontier marked), and one row per harness metric."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = ["loss", *harness_metrics(points)]
  fig, axes = plt.subplots(len(rows), 2, figsize=(11, 4.2 * len(rows)), squeeze=False)
  methods = list(dict.fromkeys(p.method for p in points))
  for r, metric in enumerate(rows):
    for ax, key, title in (
      (axes[r][0], "at_conversion", "right after conversion"),
      (axes[r][1], "after", f"after {steps} uptraining steps"),
    ):
      value = lambda p: getattr(p, key).get(metric, float("nan"))
      off = dominated(points, key) if metric == "loss" else set()
      for n, m in enumerate(methods):
        mine = sorted(
          (p.bytes_per_token, value(p), i) for i, p in enumerate(points) if p.method == m
        )
        color = f"C{n}"
        ax.plot(
          [b for b, _, _ in mine], [v for _, v, _ in mine], "-", color=color, alpha=0.6, label=m
        )
        for b, v, i in mine:
          ax.plot(
            b, v, "o", color=color, markersize=7, markerfacecolor="white" if i in off else color
          )
      if metric == "loss":
        frontier = sorted(
          (p.bytes_per_token, value(p)) for i, p in enumerate(points) if i not in off
        )
        ax.plot([b for b, _ in frontier], [v for _, v in frontier], "k:", lw=1, label="frontier")
      ax.set_xscale("log", base=2)
      if "perplexity" in metric:  # spans orders of magnitude
        ax.set_yscale("log")
      ax.set_xlabel("KV-cache bytes per token")
      ax.set_ylabel("held-out loss" if metric == "loss" else metric)
      ax.set_title(title)
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle("quality vs KV cache (filled: on the loss frontier; hollow: dominated)", fontsize=10)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the title
  fig.savefig(out_png, dpi=120)
  plt.close(fig)


def write(
  points,
  methods: list[str],
  out: str,
  steps: int,
  command: str,
  init_from: str,
  base,
  seconds: float,
  ranking: str | None = None,
) -> None:
  """OUT/results.md, results.json and pareto.png of the points so far. ranking: how well the
  calibration error ranks the loss at conversion (a sentence), once every point is scored."""
  what = describe_data(base.data)
  lines = [
    f"# Quality vs KV cache: {', '.join(methods)}",
    "",
    f"Command: `python -m wgqa_jax.pareto {command}`",
    "",
    f"MHA checkpoint {init_from}; {what}; held-out loss (lower is better) of the same "
    f"objective; every point uptrained {steps} steps with one config; "
    f"{seconds:.0f} s in all. `*`: on the frontier (no point has fewer or equal bytes "
    f"and a lower loss). KV cache in {base.model.dtype}.",
    "",
  ]
  lines += loss_table(points, ["mha"] + methods, "at_conversion", "Right after conversion")
  lines += loss_table(points, ["mha"] + methods, "after", f"After {steps} uptraining steps")
  if ranking:
    lines += table(
      points,
      ["mha"] + methods,
      "Calibration error of the merge (lower keeps the heads better)",
      lambda i, p: "" if p.proxy is None else f"{p.proxy:.4f}",
    )
    lines += [ranking, ""]
  harness = harness_metrics(points)
  for metric in harness:
    lines += table(
      points,
      ["mha"] + methods,
      f"{metric} (lm-evaluation-harness): at conversion -> after {steps} steps",
      lambda i, p: " -> ".join(
        f"{getattr(p, key).get(metric, float('nan')):.4g}" for key in ("at_conversion", "after")
      ),
    )
  extra = sorted({k for p in points for k in p.after} - {"loss", "perplexity", *harness})
  if extra:
    lines += [
      f"Other metrics after {steps} steps:",
      "",
      "| method | KV heads | " + " | ".join(extra) + " |",
      "|---|---|" + "---|" * len(extra),
    ]
    lines += [
      f"| {p.method} | {p.kv_heads} | "
      + " | ".join(f"{p.after.get(k, float('nan')):.2f}" for k in extra)
      + " |"
      for p in points
    ]
  workdir_lib.write_text(os.path.join(out, "results.md"), "\n".join(lines) + "\n")  # whole
  workdir_lib.write_json(
    os.path.join(out, "results.json"),
    {
      "command": command,
      "init_from": init_from,
      "steps": steps,
      "points": [dataclasses.asdict(p) for p in points],
      "frontier_at_conversion": [
        i for i in range(len(points)) if i not in dominated(points, "at_conversion")
      ],
      "frontier_after": [i for i in range(len(points)) if i not in dominated(points, "after")],
    },
    indent=1,
  )
  plot(points, os.path.join(out, "pareto.png"), steps)
