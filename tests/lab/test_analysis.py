"""analysis (WGQA weight plots, t-tests, curves) and the sweep CLI, end to end on tiny runs."""

import json
import os
import re

import numpy as np
import pytest
from builders import tiny

from wgqa_jax.lab import analysis
from wgqa_jax.tools import sweep
from wgqa_jax.training import trainer


def test_ttest_matches_the_formula():
  w = np.array([0.2, 0.3, 0.25, 0.4, 0.1, 0.35])
  r = analysis.ttest(w, 0.5)
  t = (w.mean() - 0.5) / (w.std(ddof=1) / np.sqrt(len(w)))
  assert r["t"] == pytest.approx(t) and r["p_value"] < 0.01
  assert analysis.ttest(np.array([0.4, 0.6, 0.5, 0.45, 0.55]))["p_value"] > 0.5


def test_weights_plots_and_curves_from_a_wgqa_run(tmp_path):
  w = tmp_path / "wgqa"
  trainer.train(tiny(num_train_steps=20, **{"checkpoint.every": 10, "eval.every": 10}), str(w))
  by_step = analysis.weights_by_step(str(w))
  assert sorted(by_step) == [10, 20]
  # tiny: 2 decoder layers x (self, cross) x (wk, wv) x 4 heads
  assert all(v.shape == (2 * 2 * 2 * 4,) for v in by_step.values())
  report = analysis.analyse([str(w)], str(tmp_path / "out"))
  assert os.path.getsize(report["curves"]) > 1000
  assert os.path.getsize(report["wgqa"]["wgqa"]["plot"]) > 1000
  tt = report["wgqa"]["wgqa"]["ttest_vs_0.5"][20]
  assert tt["n"] == 32 and tt["mean"] == pytest.approx(by_step[20].mean(), rel=1e-6)


# 55 s; its parts (uptrain, the MHA checkpoint, a finished point read back) run in the pareto
# test too: kept out of CI's 20 minutes (pytest -m slow)
@pytest.mark.slow
def test_sweep_runs_variants_from_one_mha_checkpoint(tmp_path):
  out = tmp_path / "sweep"
  sets = [
    "--config.data.max_input_length=64",
    "--config.data.max_target_length=16",
    "--config.optim.batch_size=8",
    "--config.eval.examples=8",
    "--config.eval.batch_size=8",
    "--config.log_every=5",
    "--config.data.train_examples=256",
  ]
  assert (
    sweep.main(
      [
        "--config=configs/tiny.py",
        f"--out={out}",
        "--variants=gqa,wgqa",
        "--pretrain_steps=10",
        "--steps=6",
        *sets,
      ]
    )
    == 0
  )
  r = json.load(open(out / "results.json"))
  assert set(r["results"]) == {"gqa", "wgqa"} and r["init_from"].endswith("pretrain_mha/final")
  table = (out / "results.md").read_text()
  assert "| gqa |" in table and "| wgqa |" in table and "Ordering by eval/rouge1" in table
  assert "Right after conversion (step 0)" in table and "nan" not in table
  assert (out / "analysis" / "wgqa_weights_wgqa.png").exists()
  # same vocabulary everywhere
  assert (out / "wgqa" / "spm.model").read_bytes() == (
    out / "pretrain_mha" / "spm.model"
  ).read_bytes()


@pytest.mark.parametrize(
  "flags,needle",
  [
    (["--variants=gqa,nope"], "choose from"),
    (["--variants=mha,gqa", "--config.grouping.kv_heads=3"], "not divisible by kv_heads=3"),
    (["--variants=gqa", "--steps=0"], "--steps=0: at least 1"),
    (["--variants=gqa", "--pretrain_steps=-1"], "--pretrain_steps=-1"),
  ],
)
def test_sweep_rejects_bad_variants_before_training(tmp_path, flags, needle):
  with pytest.raises(ValueError, match=re.escape(needle)):
    sweep.main(["--config=configs/tiny.py", f"--out={tmp_path / 'out'}", *flags])
  assert not (tmp_path / "out").exists()


def test_curves_plot_what_every_run_logged_or_refuse_before_writing(tmp_path):
  """A pretraining run logs only the held-out loss: its curves are the loss, not an empty plot
  of ROUGE; a metric a run never logged, or two runs of one name, are refused first."""
  from wgqa_jax.core import errors

  runs = {}
  for name, rows in {
    "pairs": [{"step": 5, "eval/loss": 2.0, "eval/rougeLsum": 10.0}],
    "corpus": [{"step": 5, "eval/loss": 3.0, "eval/perplexity": 20.1}],
  }.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs[name] = str(tmp_path / name)
  report = analysis.analyse([runs["corpus"]], str(tmp_path / "a"))
  assert report["metric"] == "eval/loss" and os.path.getsize(report["curves"]) > 1000
  assert analysis.analyse([runs["pairs"]], str(tmp_path / "b"))["metric"] == "eval/rougeLsum"
  assert analysis.analyse(list(runs.values()), str(tmp_path / "c"))["metric"] == "eval/loss"
  (tmp_path / "x" / "pairs").mkdir(parents=True)
  (tmp_path / "x" / "pairs" / "metrics.jsonl").write_text("")
  for workdirs, metric, needle in [
    ([runs["corpus"]], "eval/rougeLsum", "logged no eval/rougeLsum; its metrics: eval/loss"),
    ([runs["pairs"], str(tmp_path / "x" / "pairs")], None, "share the name 'pairs'"),
  ]:
    with pytest.raises(errors.UserError, match=re.escape(needle)):
      analysis.analyse(workdirs, str(tmp_path / "refused"), metric)
    assert not (tmp_path / "refused").exists()
