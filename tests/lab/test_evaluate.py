"""The evaluate CLI on a freshly trained tiny workdir."""

import json
import os

import numpy as np
import pytest
from builders import tiny

from wgqa_jax import decoding
from wgqa_jax.tools import evaluate
from wgqa_jax.training import metrics, trainer


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp("run")
  trainer.train(tiny(num_train_steps=30, tokenizer="sentencepiece"), str(w))
  return w


def test_evaluate_writes_scores_with_confidence_intervals(workdir, tmp_path):
  out = tmp_path / "eval.json"
  assert (
    evaluate.main(
      [
        f"--checkpoint={workdir}",
        "--split=test",
        "--num_examples=20",
        "--batch_size=8",
        f"--out={out}",
        "--bootstrap=200",
      ]
    )
    == 0
  )
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
  common = [
    f"--checkpoint={workdir}/final",
    "--split=test",
    "--num_examples=12",
    "--batch_size=8",
    "--bootstrap=50",
  ]
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


def test_evaluate_uses_the_checkpoints_generation_settings_and_flags_override(
  workdir, tmp_path, capsys
):
  from wgqa_jax.store import generation_file

  assert generation_file.load(str(workdir / "best")) == generation_file.OFFLINE_DEFAULT  # kept
  out = tmp_path / "d.json"
  common = [
    f"--checkpoint={workdir}",
    "--split=test",
    "--num_examples=8",
    "--batch_size=8",
    "--bootstrap=20",
  ]
  evaluate.main(common + [f"--out={out}"])
  assert "num_beams=4" in capsys.readouterr().out  # printed
  g = json.load(open(out))["generation"]
  assert (g["num_beams"], g["early_stopping"], g["max_new_tokens"]) == (4, True, 24)
  evaluate.main(
    common
    + [
      f"--out={out}",
      "--num_beams=2",
      "--early_stopping=never",
      "--no_repeat_ngram_size=2",
      "--max_decode_length=5",
    ]
  )
  g = json.load(open(out))["generation"]
  assert (g["num_beams"], g["early_stopping"], g["no_repeat_ngram_size"], g["max_new_tokens"]) == (
    2,
    "never",
    2,
    5,
  )


def test_conversion_keeps_hf_generation_settings_through_export(tmp_path):
  """t5-small's task_specific_params and a generation_config.json survive convert (our params
  dir), drive evaluate's defaults, and come back out of --export_hf."""
  import subprocess
  import sys

  from conftest import V10, make_hf_model

  from wgqa_jax.decoding import settings as generation
  from wgqa_jax.store.resolve import resolve

  hf = make_hf_model(V10)
  hf.config.task_specific_params = {
    "summarization": dict(
      early_stopping=True,
      length_penalty=2.0,
      max_length=200,
      min_length=30,
      no_repeat_ngram_size=3,
      num_beams=4,
      prefix="summarize: ",
    )
  }
  hf.save_pretrained(str(tmp_path / "hf"))
  (tmp_path / "hf" / "generation_config.json").write_text(
    json.dumps({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, "num_beams": 2})
  )
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "wgqa_jax.convert",
      f"--hf={tmp_path / 'hf'}",
      "--variant=gqa",
      "--kv_heads=2",
      f"--out={tmp_path / 'ours'}",
      f"--export_hf={tmp_path / 'back'}",
    ],
    capture_output=True,
    text=True,
  )
  assert r.returncode == 0, r.stderr
  settings = resolve(str(tmp_path / "ours")).generation_settings
  g = generation.for_task(settings, "summarization")
  assert (
    g.num_beams,
    g.length_penalty,
    g.min_length,
    g.no_repeat_ngram_size,
    g.max_new_tokens,
    g.early_stopping,
  ) == (4, 2.0, 30, 3, 199, True)
  assert generation.for_task(settings, "translation").num_beams == 2  # generation_config.json
  back = json.load(open(tmp_path / "back" / "config.json"))
  assert back["task_specific_params"]["summarization"]["num_beams"] == 4
  assert json.load(open(tmp_path / "back" / "generation_config.json"))["num_beams"] == 2


@pytest.mark.parametrize(
  "flag,needle",
  [
    ("--num_examples=-3", "--num_examples=-3: must be positive"),
    ("--max_decode_length=0", "--max_decode_length=0: must be positive"),
    ("--batch_size=0", "--batch_size=0: must be positive"),
    ("--top_p=1.5", "must be in (0, 1]"),
    ("--out={tmp}", "is a directory"),
    ("--out={tmp}/missing/eval.json", "no directory"),
  ],
)
def test_bad_flags_are_refused_before_anything_is_decoded(
  workdir, tmp_path, flag, needle, monkeypatch
):
  decoded = []
  monkeypatch.setattr(decoding, "predict", lambda *a, **k: decoded.append(1) or [])
  with pytest.raises(ValueError) as e:
    evaluate.main([f"--checkpoint={workdir}", flag.format(tmp=tmp_path)])
  assert needle in str(e.value) and not decoded
  assert "\n" not in str(e.value)


def test_a_runs_results_are_kept_beside_its_params_one_file_per_dataset_and_split(workdir):
  """Not inside best/: a resumed run that finds a better model swaps best/ whole."""
  common = [f"--checkpoint={workdir}", "--num_examples=4", "--batch_size=8", "--bootstrap=10"]
  evaluate.main(common + ["--split=test"])
  evaluate.main(common + ["--split=validation"])
  evals = workdir / "evals"
  assert sorted(os.listdir(evals)) == [
    "best_synthetic_summarize_test.json",
    "best_synthetic_summarize_validation.json",
  ]
  assert not list((workdir / "best").glob("eval_*"))
