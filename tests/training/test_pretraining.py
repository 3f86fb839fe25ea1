"""Continued pretraining end to end (data.objective span_corruption / causal_lm on the standard
library corpus): held-out loss falls, kill -9 mid-epoch resumes exactly, bad input is one line."""

import json
import os
import re
import signal

import numpy as np
import pytest
from conftest import run_train, start_train, wait_until

from wgqa_jax.core import errors
from wgqa_jax.training import trainer
from wgqa_jax.training.config import base_config


def pretrain(objective, **flat):
  c = base_config()
  causal = objective == "causal_lm"
  c.update_from_flattened_dict(
    {
      "model.arch": "llama-tiny" if causal else "tiny",
      "data.objective": objective,
      "data.dataset": "python_stdlib",
      "data.tokenizer": "bytes" if causal else "sentencepiece",
      "data.max_input_length": 48 if causal else 64,
      "data.max_target_length": 16,
      "data.train_examples": 300,
      "data.pack_window": 8,
      "data.workers": 0,
      "optim.batch_size": 8,
      "optim.num_epochs": 0,
      "optim.num_train_steps": 40,
      "optim.learning_rate": 3e-3,
      "optim.warmup_steps": 5,
      "log_every": 5,
      "eval.every": 0,
      "eval.at_start": True,
      "eval.examples": 4,
      "eval.batch_size": 16,
      "checkpoint.every": 20,
      "mesh.data": 1,
      **flat,
    }
  )
  return c


def rows(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.parametrize("objective", ["span_corruption", "causal_lm"])
def test_uptraining_on_the_stdlib_corpus_lowers_held_out_loss(tmp_path, objective):
  last = trainer.train(pretrain(objective), str(tmp_path))
  evals = [r for r in rows(str(tmp_path)) if "eval/loss" in r]
  assert [r["step"] for r in evals] == [0, 40]
  assert all(r["objective"] == objective for r in evals)
  assert evals[1]["eval/loss"] < evals[0]["eval/loss"] - 0.3, evals
  assert last["eval/perplexity"] == pytest.approx(np.exp(last["eval/loss"]), rel=1e-6)
  best = json.load(open(tmp_path / "best_metric.json"))
  assert best["metric"] == "loss" and best["step"] == 40  # the lowest loss is kept
  from wgqa_jax.tools import evaluate  # decoding a corpus makes no sense: say where the loss is

  with pytest.raises(ValueError, match="held-out loss and perplexity are in metrics.jsonl"):
    evaluate.main([f"--checkpoint={tmp_path}"])


def test_stage_two_fine_tunes_the_uptrained_model_with_its_vocabulary(tmp_path):
  """The recipe's second stage: init_from the span-corruption run's final/ (its embeddings
  include the sentinels) and its sentencepiece model, on a task of pairs."""
  up = tmp_path / "uptrain"
  trainer.train(pretrain("span_corruption", **{"optim.num_train_steps": 10}), str(up))
  c = base_config()
  c.update_from_flattened_dict(
    {
      "model.init_from": str(up / "final"),
      "data.tokenizer": str(up / "spm.model"),
      "data.max_input_length": 64,
      "data.max_target_length": 16,
      "data.train_examples": 64,
      "data.workers": 0,
      "optim.batch_size": 8,
      "optim.num_epochs": 0,
      "optim.num_train_steps": 10,
      "eval.examples": 8,
      "eval.max_decode_length": 8,
      "mesh.data": 1,
    }
  )
  last = trainer.train(c, str(tmp_path / "finetune"))
  assert np.isfinite(last["eval/loss"]) and "eval/rouge1" in last
  assert not (tmp_path / "finetune" / "spm.model").exists()  # the uptraining's vocabulary


def losses(workdir):
  return {r["step"]: r["train/loss"] for r in rows(workdir) if "train/loss" in r}


def test_kill_9_mid_epoch_resumes_the_uninterrupted_run_exactly(tmp_path):
  """A real SIGKILL after the step-20 checkpoint, mid-epoch and mid-window: the rerun's losses
  equal the uninterrupted run's (same rows, same order)."""
  flat = {"optim.num_train_steps": 40, "eval.at_start": False}
  full = str(tmp_path / "full")
  trainer.train(pretrain("causal_lm", **flat), full)
  cut = tmp_path / "cut"
  same = {
    "data.tokenizer": "bytes",
    "data.max_input_length": 48,
    "data.max_target_length": 16,
    "data.train_examples": 300,
    "data.pack_window": 8,
    "data.workers": 0,
    "optim.batch_size": 8,
    "optim.num_train_steps": 40,
    "optim.learning_rate": 3e-3,
    "optim.warmup_steps": 5,
    "log_every": 5,
    "eval.every": 0,
    "eval.examples": 4,
    "eval.batch_size": 16,
    "checkpoint.every": 20,
    "mesh.data": 1,
  }
  args = ["--config=configs/llama_uptrain.py:tiny", f"--workdir={cut}"] + [
    f"--config.{k}={v}" for k, v in same.items()
  ]
  proc = start_train(*args)
  metrics = cut / "metrics.jsonl"
  wait_until(
    lambda: (
      (cut / "checkpoints" / "20").exists()
      and metrics.exists()
      and '"step": 25' in metrics.read_text()
    ),
    240,
  )
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert not (cut / "final").exists()
  r = run_train(*args)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "resumed from step 20" in r.stdout + r.stderr
  a, b = losses(full), losses(str(cut))
  assert sorted(a) == sorted(b)
  np.testing.assert_allclose(
    [b[k] for k in (25, 30, 35, 40)], [a[k] for k in (25, 30, 35, 40)], rtol=1e-5
  )


@pytest.mark.parametrize(
  "args,needle",
  [
    (
      [
        "--config=configs/llama_uptrain.py:tiny",
        "--config.data.objective=span_corruption",
        "--config.data.tokenizer=sentencepiece",
      ],
      "does not fit",
    ),
    (
      ["--config=configs/gqa_paper.py:gqa,tiny", "--config.data.objective=causal_lm"],
      "does not fit",
    ),
    (
      ["--config=configs/gqa_paper.py:gqa,tiny", "--config.data.tokenizer=bytes"],
      "no sentinel ids",
    ),
    (
      ["--config=configs/gqa_paper.py:gqa,tiny", "--config.data.max_target_length=20"],
      "max_target_length >= 29",
    ),
    (
      ["--config=configs/gqa_paper.py:gqa,tiny", "--config.data.dataset=/nonexistent/corpus"],
      "no corpus directory",
    ),
    (
      ["--config=configs/gqa_paper.py:gqa,tiny", "--config.data.dataset=cnn_dailymail"],
      "reads a text corpus",
    ),
    (
      ["--config=configs/tiny.py", "--config.data.dataset=python_stdlib"],
      "needs data.objective=span_corruption or causal_lm",
    ),
    (["--config=configs/llama_uptrain.py:tiny", "--config.optim.loss_on=answer"], "every token"),
    (["--config=configs/gqa_paper.py:gqa,tiny", "--config.data.objective=mlm"], "choose from"),
  ],
)
def test_objective_errors_are_one_line_and_write_nothing(tmp_path, args, needle):
  r = run_train(*args, f"--workdir={tmp_path / 'w'}")
  assert r.returncode == errors.EXIT_USER_ERROR, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and needle in r.stderr, r.stderr[-3000:]
  assert len(r.stderr.strip().splitlines()) <= 3, r.stderr
  assert not (tmp_path / "w").exists()


def test_planner_shapes_causal_rows_as_one_sequence():
  from wgqa_jax.core import sharding
  from wgqa_jax.lab import plan

  c = pretrain("causal_lm")
  batch = plan.abstract_batch(c, sharding.make_mesh(-1, 1, 1))
  assert {k: v.shape for k, v in batch.items()} == {
    k: (8, 64) for k in ("tokens", "segment_ids", "positions")
  }


@pytest.mark.parametrize(
  "flat,needle",
  [
    ({"eval.examples": 0}, "eval.examples=0: must be positive"),
    ({"eval.examples": -1}, "eval.examples=-1: must be positive"),
    ({"data.max_input_length": 1}, "span corruption needs inputs of at least 3 tokens"),
    ({"data.max_input_length": 2}, "span corruption needs inputs of at least 3 tokens"),
    ({"model.attention": "flash"}, "model.attention='flash': choose from ['einsum', 'dot_pro"),
  ],
)
def test_values_that_would_run_on_nothing_or_break_mid_run_are_refused_first(
  tmp_path, flat, needle
):
  """Caught by the config's validation, before the workdir exists (eval.examples=0 logged a
  loss of 0 over no example; inputs of 1-9 tokens broke span corruption after writing)."""
  with pytest.raises(errors.UserError, match=re.escape(needle)):
    trainer.train(pretrain("span_corruption", **flat), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  # (rows of 3-15 tokens fit: tests/data/test_span_corruption.py)
