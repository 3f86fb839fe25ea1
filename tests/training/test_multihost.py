"""Multi-host training, for real: two processes joined by jax.distributed (gloo collectives on
CPU), two devices each, against one process with four devices. Same global batches, same mesh
shape, so the losses must agree; and the eval (greedy decoding whose output spans both hosts),
the best/ and final/ saves and the shared tokenizer must work from every process; and the
checkpoint the two processes wrote must resume in a single process on a different mesh."""

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "multihost_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start(pid, n, port, workdir, devices, stop=20, objective="pairs"):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen(
    [
      sys.executable,
      WORKER,
      str(pid),
      str(n),
      str(port),
      str(workdir),
      str(devices),
      str(stop),
      objective,
    ],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def result(proc, expect_in_output: str = "") -> dict:
  try:
    out, _ = proc.communicate(timeout=600)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail("a worker hung")
  assert proc.returncode == 0, out[-4000:]
  assert expect_in_output in out, out[-4000:]
  return json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[len("RESULT ") :])


@pytest.mark.slow  # 80 s on 2 cores: two processes compile the same step; CI keeps to 20 minutes
def test_two_processes_train_like_one(tmp_path):
  port = free_port()
  procs = [start(i, 2, port, tmp_path / "multi", 2) for i in range(2)]
  multi = [result(p) for p in procs]
  single = result(start(0, 1, 0, tmp_path / "single", 4))

  assert [r["process"] for r in multi] == [0, 1] and {r["count"] for r in multi} == {2}
  assert {r["devices"] for r in multi} == {4} and single["devices"] == 4
  keys = ("train/loss", "train/grad_norm", "eval/loss", "eval/rouge1", "wgqa/mean")
  for k in keys:  # every process reports the same global numbers ...
    assert multi[0][k] == multi[1][k], k
    assert multi[0][k] == pytest.approx(single[k], rel=1e-4, abs=1e-5), k  # ... as one process
  # written once, by process 0; stopped at 20 of 30 (as if preempted), so no final/ yet
  assert (tmp_path / "multi" / "best" / "params.safetensors").exists()
  assert not (tmp_path / "multi" / "final").exists()
  assert (tmp_path / "multi" / "spm.model").exists()
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["10", "20"]

  # the two-host checkpoint resumes in one process on a smaller mesh (data axis 4 -> 2)
  resumed = result(start(0, 1, 0, tmp_path / "multi", 2, stop=30), "resumed from step 20")
  assert resumed["step"] == 30 and resumed["devices"] == 2
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints"), key=int) == ["10", "20", "30"]
  assert (tmp_path / "multi" / "final" / "params.safetensors").exists()


@pytest.mark.slow  # two processes compile the same step
def test_two_processes_pretrain_on_their_own_documents(tmp_path):
  """Causal LM on the standard-library corpus over two processes: each reads its own windows
  of documents (disjoint, tests/data/test_text_rows.py), the held-out eval batch spans both hosts,
  every process reports the same global numbers, and the checkpoint resumes in one process,
  saying that the document order restarts."""
  port = free_port()
  procs = [start(i, 2, port, tmp_path / "multi", 2, objective="causal_lm") for i in range(2)]
  multi = [result(p) for p in procs]
  for k in ("train/loss", "train/grad_norm", "eval/loss", "eval/perplexity"):
    assert multi[0][k] == multi[1][k], k
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["10", "20"]
  resumed = result(
    start(0, 1, 0, tmp_path / "multi", 2, stop=30, objective="causal_lm"),
    "resumes on 1 processes instead of 2",
  )
  assert resumed["step"] == 30 and resumed["eval/loss"] < multi[0]["eval/loss"] + 0.5
