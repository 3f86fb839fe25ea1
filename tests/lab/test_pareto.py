"""The Pareto tool (wgqa_jax.pareto): every method x budget from one MHA checkpoint, the table,
json and plot, the frontier, resuming, and its one-line refusals before any training."""

import json
import os

import pytest

from wgqa_jax.lab import pareto_report
from wgqa_jax.lab.pareto_report import Point
from wgqa_jax.tools import pareto

SETS = [
  "--config.data.max_input_length=48",
  "--config.data.max_target_length=16",
  "--config.optim.batch_size=8",
  "--config.eval.examples=8",
  "--config.eval.batch_size=8",
  "--config.log_every=5",
  "--config.data.train_examples=64",
  "--config.grouping.calibration_batches=2",
]


def test_pareto_runs_every_method_and_budget_and_resumes(tmp_path):
  out = tmp_path / "pareto"
  args = [
    "--config=configs/llama_uptrain.py:tiny",
    f"--out={out}",
    "--methods=mean,svd,search,allocated,mla,mla-allocated",
    "--budgets=1/2,1/4",
    "--pretrain_steps=8",
    "--steps=3",
    *SETS,
  ]
  assert pareto.main(args) == 0
  r = json.load(open(out / "results.json"))
  points = {(p["method"], p["kv_heads"]): p for p in r["points"]}
  assert set(points) == {
    ("mha", 4),
    ("mean", 2),
    ("svd", 2),
    ("search", 2),
    ("allocated", 2),
    ("mean", 1),
    ("svd", 1),
    ("search", 1),
    ("allocated", 1),
    ("mla", 2),
    ("mla-allocated", 2),
    ("mla", 1),
    ("mla-allocated", 1),
  }
  # allocated: the same heads in all (here 2 x 2 or 1 x 2), spread over the two layers
  for g in (2, 1):
    assert points["allocated", g]["bytes_per_token"] <= points["svd", g]["bytes_per_token"]
  # llama-tiny: 2 layers x K and V x G heads x 16 dims x 4 bytes
  assert points["mha", 4]["bytes_per_token"] == 2 * 2 * 4 * 16 * 4
  assert points["svd", 1]["bytes_per_token"] == 2 * 2 * 1 * 16 * 4
  # mla: a latent and a rotary key of the same bytes as G heads (spread over layers: no more)
  for g in (2, 1):
    assert points["mla", g]["bytes_per_token"] == points["svd", g]["bytes_per_token"]
    assert points["mla-allocated", g]["bytes_per_token"] <= points["mla", g]["bytes_per_token"]
  for p in r["points"]:
    assert p["at_conversion"]["loss"] > 0 and p["after"]["loss"] > 0
  for key in ("at_conversion", "after"):  # the best point and the cheapest best are on it
    losses = [p[key]["loss"] for p in r["points"]]
    assert losses.index(min(losses)) in r[f"frontier_{key}"]
    cheapest = min(r["points"], key=lambda p: (p["bytes_per_token"], p[key]["loss"]))
    assert r["points"].index(cheapest) in r[f"frontier_{key}"]
  table = (out / "results.md").read_text()
  assert "### Right after conversion" in table and "### After 3 uptraining steps" in table
  assert "| 2 (1/2) | 512 |" in table and "nan" not in table
  assert os.path.getsize(out / "pareto.png") > 10_000
  # the calibration error: svd keeps the heads at least as well as mean-pooling, search as svd
  assert "Spearman rho" in table and points["mha", 4]["proxy"] == 0
  for g in (2, 1):
    assert points["search", g]["proxy"] <= points["svd", g]["proxy"] <= points["mean", g]["proxy"]
  assert (out / "svd_kv1" / "calibration.npz").exists()
  # a second run reads every point back instead of training again
  stamps = {d: os.path.getmtime(out / d / "metrics.jsonl") for d in ("mha", "svd_kv1")}
  assert pareto.main(args) == 0
  assert stamps == {d: os.path.getmtime(out / d / "metrics.jsonl") for d in stamps}
  # ... but never under another config, even with the checkpoints gone
  import shutil

  for ckpts in out.glob("*/checkpoints"):
    shutil.rmtree(ckpts)
  table = (out / "results.md").read_bytes()
  with pytest.raises(ValueError, match=r"another config.*optim\.learning_rate: 0\.003 -> 0\.0123"):
    pareto.main(args + ["--config.optim.learning_rate=0.0123"])  # (its MHA run refuses first)
  assert (out / "results.md").read_bytes() == table
  from wgqa_jax.lab import sweep
  from wgqa_jax.training.config import base_config

  finished = json.load(open(out / "svd_kv1" / "config.json"))
  c = base_config()
  c.update_from_flattened_dict(
    {k: v for k, v in flatten(finished).items() if k in flatten(c.to_dict())}
  )
  c.optim.learning_rate = 0.0123  # the point itself, read back under another config
  with pytest.raises(ValueError, match=r"holds the results of another config \(optim\.learning"):
    sweep.uptrain(c, dict(c.grouping), c.model.init_from, None, 3, str(out / "svd_kv1"), 1)


def test_pareto_scores_every_point_on_harness_tasks(tmp_path):
  """--eval_tasks: lm-evaluation-harness metrics beside the loss, at conversion and after, for
  every point, in results.md / json and as rows of the plot."""
  from harness_tasks import write_tasks

  out = tmp_path / "pareto"
  include = write_tasks(tmp_path / "tasks")
  args = [
    "--config=configs/llama_uptrain.py:tiny",
    f"--out={out}",
    "--methods=mean",
    "--budgets=1/4",
    "--pretrain_steps=8",
    "--steps=3",
    "--eval_tasks=wgqa_mc,wgqa_ppl",
    f"--eval_include_path={include}",
    "--eval_limit=3",
    *SETS,
  ]
  assert pareto.main(args) == 0
  r = json.load(open(out / "results.json"))
  assert [(p["method"], p["kv_heads"]) for p in r["points"]] == [("mha", 4), ("mean", 1)]
  for p in r["points"]:
    for key in ("at_conversion", "after"):
      assert 0 <= p[key]["wgqa_mc:acc"] <= 1 and p[key]["wgqa_ppl:bits_per_byte"] > 0
  mha, mean = r["points"]
  # uptraining changed the model, and grouping it changed it too: real scores, not copies
  assert mha["at_conversion"]["wgqa_ppl:bits_per_byte"] != mha["after"]["wgqa_ppl:bits_per_byte"]
  assert (
    mean["at_conversion"]["wgqa_ppl:bits_per_byte"]
    != mha["at_conversion"]["wgqa_ppl:bits_per_byte"]
  )
  table = (out / "results.md").read_text()
  assert "### wgqa_ppl:bits_per_byte (lm-evaluation-harness): at conversion -> after 3" in table
  import matplotlib.image

  assert matplotlib.image.imread(out / "pareto.png").shape[0] > 1200  # 1 + 5 metric rows


def flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


def test_frontier_marks_the_dominated_points():
  pt = lambda m, b, loss: Point(m, 0, "", b, {"loss": loss}, {"loss": loss}, "")
  points = [
    pt("a", 100, 1.0),
    pt("b", 50, 2.0),
    pt("c", 50, 1.5),
    pt("d", 100, 1.5),
    pt("e", 25, 3.0),
  ]
  assert pareto_report.dominated(points, "after") == {1, 3}


@pytest.mark.parametrize(
  "flags, message",
  [
    (
      ["--budgets=1/3"],
      "budget 1/3 of 4 heads is not a whole number of KV heads dividing 4: "
      "choose among ['1/4', '1/2', '1']",
    ),
    (["--budgets=half"], "budget 'half' is not a fraction like 1/4"),
    (["--methods=mqa"], "method 'mqa' fixes its own KV heads"),
    (["--methods=svdd"], "unknown variant 'svdd' (did you mean 'svd'?)"),
    (
      ["--methods=svd", "--config.grouping.calibration_batches=0"],
      "config.grouping.calibration_batches=0: svd calibrates its merge on training batches",
    ),
    (["--steps=0"], "--steps=0: at least 1"),
    (
      ["--methods=allocated", "--config.model.scan_layers=True"],
      "cannot be scanned: set model.scan_layers=False",
    ),
    (
      ["--methods=mean", "--config.grouping.layer_budget=proxy"],
      "spreading KV heads by calibration error needs a calibrated variant",
    ),
    (
      ["--pretrain_steps=0"],
      "pareto converts one MHA checkpoint: pass --config.model.init_from=DIR",
    ),
    (
      ["--budgets=1/2", "--eval_tasks=wgqa_nosuch"],
      "lm-evaluation-harness has no task ['wgqa_nosuch']",
    ),
    (
      ["--budgets=1/2", "--eval_tasks=wgqa_mc", "--eval_include_path=/nonexistent/tasks"],
      "task folder /nonexistent/tasks: no such directory",
    ),
  ],
)
def test_bad_input_fails_in_one_line_before_any_work(tmp_path, flags, message):
  out = tmp_path / "out"
  base = ["--config=configs/llama_uptrain.py:tiny", f"--out={out}", "--pretrain_steps=5"]
  with pytest.raises(ValueError) as e:
    pareto.main(base + flags)
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not out.exists()
