"""The evaluate CLI on a freshly trained tiny workdir."""
import json

import numpy as np
import pytest

from wgqa_jax import evaluate, metrics, train
from test_train import tiny


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp("run")
  train.train(tiny(num_train_steps=30, tokenizer="sentencepiece"), str(w))
  return w


def test_evaluate_writes_scores_with_confidence_intervals(workdir, tmp_path):
  out = tmp_path / "eval.json"
  assert evaluate.main([f"--checkpoint={workdir}", "--split=test", "--num_examples=20",
                        "--batch_size=8", f"--out={out}", "--bootstrap=200"]) == 0
  r = json.load(open(out))
  assert r["num_examples"] == len(r["predictions"]) == 20 and r["dataset"] == "synthetic_summarize"
  assert r["checkpoint"].endswith("best")
  want = metrics.rouge(r["predictions"], r["references"])
  for k, v in want.items():
    assert r["scores"][k]["mean"] == pytest.approx(v)
    lo, hi = r["scores"][k]["ci95"]
    assert lo <= v <= hi


def test_folded_and_beam_evaluation(workdir, tmp_path):
  a, b = tmp_path / "a.json", tmp_path / "b.json"
  common = [f"--checkpoint={workdir}/final", "--split=test", "--num_examples=12",
            "--batch_size=8", "--bootstrap=50"]
  evaluate.main(common + [f"--out={a}"])
  evaluate.main(common + [f"--out={b}", "--fold"])
  assert json.load(open(a))["predictions"] == json.load(open(b))["predictions"]
  c = tmp_path / "c.json"
  evaluate.main(common + [f"--out={c}", "--num_beams=3"])
  assert len(json.load(open(c))["predictions"]) == 12


def test_bootstrap_ci_brackets_the_mean():
  v = np.random.default_rng(0).normal(50, 10, 400)
  lo, hi = metrics.bootstrap_ci(v, 500)
  assert lo < v.mean() < hi and hi - lo < 4 * 10 / np.sqrt(400) * 1.5


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such checkpoint"):
    evaluate.main([f"--checkpoint={tmp_path}/nope"])
  with pytest.raises(FileNotFoundError, match="neither a training workdir"):
    evaluate.main([f"--checkpoint={tmp_path}"])
