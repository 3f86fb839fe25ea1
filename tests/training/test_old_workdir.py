"""A workdir written before the package was layered (issue #32) resumes with today's code into
the same run: tests/fixtures/workdir_v0 is a tiny WGQA T5 run the old main stopped after step
10 of 20; tests/fixtures/workdir_v0_uninterrupted is the same run, uninterrupted, by that old
main (its config: tests/workdir_v0_config.py)."""

import json
import os
import shutil

import numpy as np
from conftest import REPO, run_train

from wgqa_jax.store import params_io

FIXTURES = os.path.join(REPO, "tests", "fixtures")


def rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_an_old_workdir_resumes_into_the_uninterrupted_run(tmp_path):
  workdir = tmp_path / "workdir_v0"
  shutil.copytree(os.path.join(FIXTURES, "workdir_v0"), workdir)
  done = run_train("--config=tests/workdir_v0_config.py", f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr[-3000:]

  old = os.path.join(FIXTURES, "workdir_v0_uninterrupted")
  now, then = rows(workdir / "metrics.jsonl"), rows(os.path.join(old, "metrics.jsonl"))
  # it went on from the checkpoint at step 10: the old run's rows (and timings) are kept
  assert now[:2] == rows(os.path.join(FIXTURES, "workdir_v0", "metrics.jsonl"))
  assert [r["step"] for r in now] == [r["step"] for r in then] == [5, 10, 15, 20, 20]
  for a, b in zip(now, then):  # every loss and eval number, step for step
    for key in [k for k in b if k.startswith(("train/loss", "train/grad_norm", "eval/", "wgqa/"))]:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=f"step {b['step']} {key}")

  params, cfg = params_io.load(str(workdir / "final"))
  old_params, old_cfg = params_io.load(old)
  assert cfg == old_cfg
  flat, old_flat = params_io.flatten(params), params_io.flatten(old_params)
  assert flat.keys() == old_flat.keys()
  for key in old_flat:
    np.testing.assert_allclose(flat[key], old_flat[key], rtol=1e-5, atol=1e-7, err_msg=key)
  with (
    open(workdir / "final" / "generation.json") as a,
    open(os.path.join(old, "generation.json")) as b,
  ):
    assert json.load(a) == json.load(b)
