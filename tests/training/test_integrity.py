"""Run integrity, with the faults injected for real: a mismatched resume, garbled / truncated
checkpoint files, a diverging learning rate, bad user input. Each asserts what the run does,
its exit code, and that nothing good was lost."""

import json
import os
import re
import subprocess

import jax
import numpy as np
import optax
import pytest
from builders import losses, tiny
from conftest import run_train as run_cli, start_train, wait_until

from wgqa_jax.core import errors
from wgqa_jax.store import checkpoints
from wgqa_jax.training import steps as train_step, trainer


def snapshot(workdir):
  """Bytes of the files a rejected run must leave alone."""
  return {
    name: open(os.path.join(workdir, name), "rb").read()
    for name in ("config.json", "metrics.jsonl")
    if os.path.exists(os.path.join(workdir, name))
  }


def data_files(workdir, step):
  root = os.path.join(workdir, "checkpoints", str(step))
  out = [
    os.path.join(d, f)
    for d, _, fs in os.walk(root)
    for f in fs
    if os.sep + "d" + os.sep in os.path.join(d, f) + os.sep and "ocdbt.process" in d
  ]
  return sorted(out, key=os.path.getsize, reverse=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 30-step run (checkpoints at 10, 20, 30)."""
  w = str(tmp_path_factory.mktemp("full"))
  trainer.train(tiny(num_train_steps=30), w)
  return losses(w)


def cut_run(tmp_path, name="cut", stop_after=20):
  w = str(tmp_path / name)
  with pytest.raises(trainer.Preempted):
    trainer.train(tiny(num_train_steps=30), w, stop_after=stop_after)
  return w


# ------------------------------------------------------------------- resume must match ----
def test_resume_with_another_model_or_schedule_stops_and_changes_nothing(tmp_path):
  w = cut_run(tmp_path, stop_after=10)
  before = snapshot(w)
  with pytest.raises(ValueError, match=r"grouping\.kv_heads: 2 -> 1.*another --workdir"):
    trainer.train(tiny(num_train_steps=30, kv_heads=1), w)
  with pytest.raises(ValueError, match=r"optim\.num_train_steps: 30 -> 40"):
    trainer.train(tiny(num_train_steps=40), w)
  with pytest.raises(ValueError, match=r"grouping\.variant: 'wgqa' -> 'gqa'.*optim\.learning_rate"):
    trainer.train(tiny(num_train_steps=30, variant="gqa", learning_rate=1e-2), w)
  assert snapshot(w) == before and not os.path.exists(os.path.join(w, "final"))
  # cadence keys may change: this resumes and finishes
  trainer.train(tiny(num_train_steps=30, log_every=10, **{"eval.every": 15}), w)
  assert os.path.exists(os.path.join(w, "final"))


def test_cli_mismatched_resume_is_one_line_exit_2(tmp_path):
  w = cut_run(tmp_path, stop_after=10)
  args = [
    "--config=configs/tiny.py",
    f"--workdir={w}",
    "--config.data.max_input_length=64",
    "--config.grouping.kv_heads=1",
  ]
  r = run_cli(*args)
  assert r.returncode == errors.EXIT_USER_ERROR, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert (
    "Traceback" not in r.stderr
    and lines[-1].startswith("error: ")
    and len([l for l in lines if l.startswith("error")]) == 1
  ), r.stderr
  assert "grouping.kv_heads: 2 -> 1" in lines[-1]


def test_bad_kv_heads_fails_before_the_workdir_exists(tmp_path):
  w = tmp_path / "never"
  with pytest.raises(ValueError, match="not divisible"):
    trainer.train(tiny(kv_heads=3), str(w))
  assert not w.exists()


# ------------------------------------------------------------------- damaged checkpoints ----
@pytest.mark.parametrize("damage", ["garble", "truncate", "metadata", "data_state"])
def test_damaged_latest_checkpoint_is_quarantined_and_the_run_resumes_from_the_one_before(
  tmp_path, reference, damage
):
  w = cut_run(tmp_path)  # checkpoints 10 and 20, metrics up to 20
  if damage == "garble":
    f = data_files(w, 20)[0]
    with open(f, "r+b") as fh:
      fh.seek(max(os.path.getsize(f) // 2 - 2048, 0))
      fh.write(np.random.default_rng(0).bytes(4096))
  elif damage == "truncate":
    f = data_files(w, 20)[0]
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 3)
  elif damage == "metadata":
    with open(os.path.join(w, "checkpoints", "20", "state", "_METADATA"), "w") as fh:
      fh.write('{"tree_metadata": garbage')
  else:  # the input pipeline's position: valid JSON, wrong position (fails its record)
    with open(os.path.join(w, "checkpoints", "20", "data", "metadata"), "w") as fh:
      fh.write('{"process_count": 1, "positions": [[7, 0]]}')
  last = trainer.train(tiny(num_train_steps=30), w)
  quarantined = os.listdir(os.path.join(w, "checkpoints_quarantine"))
  assert [q for q in quarantined if q.startswith("20-") and not q.endswith(".json")], quarantined
  got = losses(w)
  assert sorted(got) == sorted(reference)  # each step once: the replayed rows were superseded
  np.testing.assert_allclose(
    [got[s] for s in (15, 20, 25, 30)], [reference[s] for s in (15, 20, 25, 30)], rtol=1e-6
  )
  assert np.isfinite(last["eval/loss"]) and os.path.exists(os.path.join(w, "final"))
  steps = [
    json.loads(l)["step"]
    for l in open(os.path.join(w, "metrics.jsonl"))
    if "train/loss" in json.loads(l)
  ]
  assert len(steps) == len(set(steps))


def test_running_out_of_memory_while_restoring_quarantines_nothing(tmp_path, monkeypatch):
  """A restore that fails for the machine's sake (here orbax raising XLA's out-of-memory error,
  as a resume onto a smaller device does) leaves every checkpoint in place."""
  w = cut_run(tmp_path, stop_after=10)

  def oom(*args, **kw):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB")

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "restore", oom)
  with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
    trainer.train(tiny(num_train_steps=30), w)
  assert not os.path.exists(os.path.join(w, "checkpoints_quarantine"))
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["10"]


def test_no_good_checkpoint_is_one_clear_error_and_nothing_is_deleted(tmp_path):
  w = cut_run(tmp_path)
  for step in (10, 20):
    with open(data_files(w, step)[0], "r+b") as fh:
      fh.write(b"\0" * 64)
      fh.seek(0)
      fh.write(np.random.default_rng(step).bytes(64))
  with pytest.raises(checkpoints.NoGoodCheckpoint, match="no checkpoint .* restores intact"):
    trainer.train(tiny(num_train_steps=30), w)
  kept = os.listdir(os.path.join(w, "checkpoints_quarantine"))
  assert {q.split("-")[0] for q in kept if not q.endswith(".json")} == {"10", "20"}
  assert not os.path.exists(os.path.join(w, "final"))


def test_fingerprint_sees_a_single_changed_bit_and_a_swap():
  tree = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int32)}
  fp = jax.device_get(checkpoints.fingerprint(tree))
  flipped = {**tree, "a": tree["a"].copy()}
  flipped["a"].view(np.uint32)[1, 2] ^= 1
  swapped = {**tree, "a": tree["a"][::-1].copy()}
  for other in (flipped, swapped):
    assert not np.array_equal(jax.device_get(checkpoints.fingerprint(other))["a"], fp["a"])
  np.testing.assert_array_equal(jax.device_get(checkpoints.fingerprint(tree))["b"], fp["b"])


# ------------------------------------------------------------------- divergence ----
def test_diverging_learning_rate_stops_with_its_last_good_checkpoint_intact(tmp_path):
  w = str(tmp_path / "div")
  c = tiny(num_train_steps=60, learning_rate=1e6, max_skipped_steps=3, max_grad_norm=0.0)
  with pytest.raises(trainer.Diverged, match="steps in a row .* non-finite"):
    trainer.train(c, w)
  assert not os.path.exists(os.path.join(w, "final")) and not os.path.exists(
    os.path.join(w, "best")
  )
  ckpts = checkpoints.Checkpoints(w, 3)
  for step in ckpts.steps():  # whatever was saved is finite and verifies
    state, problem = ckpts.try_restore(step, None)
    assert problem is None, problem
  ckpts.close()


def test_cli_divergence_exit_code(tmp_path):
  r = run_cli(
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}",
    "--config.optim.learning_rate=1e6",
    "--config.optim.max_grad_norm=0.0",
    "--config.optim.max_skipped_steps=2",
    "--config.optim.num_train_steps=200",
    "--config.optim.batch_size=8",
    "--config.mesh.data=1",
    "--config.eval.every=0",
  )
  assert r.returncode == errors.EXIT_DIVERGED, r.stderr[-3000:]
  assert "skipped" in r.stdout + r.stderr and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("error: diverged")


def test_a_non_finite_optimizer_state_is_reported_as_broken():
  """Loss and gradients finite, the optimizer state not (only a non-finite update could leave
  it so): the step is flagged "broken", which stops the run at once (loop_parts.SkipGuard,
  tests/training/test_memory_options.py); a healthy step is not."""
  from builders import tiny_model_and_batch

  cfg, params, batch = tiny_model_and_batch()
  tx = optax.adamw(1e-2)
  step = jax.jit(train_step.make_train_step(cfg, tiny().optim, tx))
  opt_state = tx.init(params)
  poisoned = jax.tree.map(
    lambda x: x * np.nan if x.dtype == np.float32 and x.ndim else x, opt_state
  )
  zero = jax.numpy.zeros((), jax.numpy.int32)
  _, out = step(
    {"step": zero, "params": params, "opt_state": opt_state}, batch, jax.random.PRNGKey(0)
  )
  assert float(out["broken"]) == 0 and float(out["skipped"]) == 0
  _, out = step(
    {"step": zero, "params": params, "opt_state": poisoned}, batch, jax.random.PRNGKey(0)
  )
  assert float(out["broken"]) == 1 and np.isfinite(float(out["loss"]))  # loss and grads fine


# ------------------------------------------------------------------- user errors ----
@pytest.mark.parametrize(
  "args,needle",
  [
    (["--config=configs/nope.py"], "No such file"),
    (["--config=configs/tiny.py", "--config.optim.learning_rat=1"], 'Did you mean "learning_rate"'),
    (
      [
        "--config=configs/tiny.py",
        "--config.data.dataset=cnn_dailymail",
        "--config.data.data_dir=/nonexistent",
      ],
      "could not open TFDS 'cnn_dailymail'",
    ),
    (
      ["--config=configs/tiny.py", "--config.model.init_from=/nonexistent/ckpt"],
      "no such checkpoint directory",
    ),
  ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, needle):
  r = run_cli(*args, f"--workdir={tmp_path / 'w'}")
  assert r.returncode == errors.EXIT_USER_ERROR, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and needle in r.stderr, r.stderr[-3000:]
  assert len(r.stderr.strip().splitlines()) <= 3, r.stderr  # absl may add a warning line
  assert not (tmp_path / "w").exists()


def test_kill_9_and_resume_leaves_each_metrics_step_once(tmp_path):
  """A real SIGKILL between checkpoints: the rerun replays the steps after the last checkpoint,
  and metrics.jsonl still holds each step once."""
  import signal

  args = [
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}",
    "--config.optim.num_train_steps=60",
    "--config.checkpoint.every=20",
    "--config.eval.every=0",
    "--config.eval.examples=8",
    "--config.log_every=5",
    "--config.optim.batch_size=8",
    "--config.mesh.data=1",
  ]
  proc = start_train(*args)
  metrics = tmp_path / "metrics.jsonl"
  ckpt = tmp_path / "checkpoints" / "20"
  wait_until(
    lambda: ckpt.exists() and metrics.exists() and '"step": 30' in metrics.read_text(), 180
  )
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  written = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if l.strip()]
  saved = max(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert max(written) > saved, (written, saved)  # rows past the checkpoint: the rerun replays
  r = run_cli(*args)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"resumed from step {saved}" in r.stdout + r.stderr
  steps = [
    json.loads(l)["step"] for l in metrics.read_text().splitlines() if "train/loss" in json.loads(l)
  ]
  assert steps == sorted(set(steps)) and steps[-1] == 60


# ---- one writer per workdir; small files that survive a kill; the run's tokenizer ----
def test_a_second_run_on_a_busy_workdir_refuses_naming_the_holder(tmp_path):
  """Two real processes on one workdir: the second refuses in one line (PID and host of the
  first), writes nothing; the first finishes with each metrics step once."""
  args = [
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}",
    "--config.optim.num_train_steps=200",
    "--config.checkpoint.every=100",
    "--config.eval.every=0",
    "--config.eval.examples=8",
    "--config.log_every=5",
    "--config.optim.batch_size=8",
    "--config.mesh.data=1",
  ]
  first = start_train(*args)
  metrics = tmp_path / "metrics.jsonl"
  wait_until(lambda: metrics.exists() and metrics.read_text().strip(), 180)
  before = metrics.read_text()
  second = run_cli(*args)
  assert second.returncode == errors.EXIT_USER_ERROR, second.stderr[-2000:]
  assert f"is in use by PID {first.pid} on" in second.stderr, second.stderr[-2000:]
  assert "Traceback" not in second.stderr
  assert first.wait(timeout=300) == 0
  steps = [
    json.loads(l)["step"] for l in metrics.read_text().splitlines() if "train/loss" in json.loads(l)
  ]
  assert steps == list(range(5, 201, 5)) and metrics.read_text().startswith(before)


def test_the_lock_is_released_whatever_ends_a_run(tmp_path):
  with pytest.raises(trainer.Preempted):
    trainer.train(tiny(), str(tmp_path), stop_after=10)
  trainer.train(tiny(), str(tmp_path))  # same process, same workdir: not "in use"


def test_torn_metrics_line_and_empty_best_record_do_not_stop_a_resume(tmp_path):
  with pytest.raises(trainer.Preempted):
    trainer.train(tiny(), str(tmp_path), stop_after=10)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 15, "train/lo')  # a kill in the middle of a write
  (tmp_path / "best_metric.json").write_text("")
  trainer.train(tiny(), str(tmp_path))
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert steps == [5, 10, 15, 20]
  assert json.load(open(tmp_path / "best_metric.json"))["step"] == 20


def test_sigterm_in_the_final_eval_is_a_preemption_and_reruns_add_no_eval_row(
  tmp_path, monkeypatch
):
  """A real SIGTERM delivered while the final eval runs: Preempted (exit 75) naming the last
  step, saved; the rerun writes final/ without evaluating again, as does rerunning it once
  finished."""
  import signal

  from wgqa_jax.training import evaluation

  run_eval = evaluation.run_eval

  def signalled(*args, **kw):
    os.kill(os.getpid(), signal.SIGTERM)
    return run_eval(*args, **kw)

  monkeypatch.setattr(evaluation, "run_eval", signalled)
  with pytest.raises(trainer.Preempted, match="saved step 20 in"):
    trainer.train(tiny(), str(tmp_path))
  assert not (tmp_path / "final").exists()
  monkeypatch.setattr(evaluation, "run_eval", run_eval)
  first = trainer.train(tiny(), str(tmp_path))
  again = trainer.train(tiny(), str(tmp_path))
  assert (tmp_path / "final").exists()
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "eval/loss" in r] == [20]
  assert again["eval/loss"] == pytest.approx(first["eval/loss"])


def test_a_changed_tokenizer_is_refused_on_resume(tmp_path):
  """An edited spm.model that still parses (here: another vocabulary trained in its place)."""
  from wgqa_jax.data import tasks, tokenizers

  c = tiny(**{"data.tokenizer": "sentencepiece"})
  with pytest.raises(trainer.Preempted):
    trainer.train(c, str(tmp_path), stop_after=10)
  os.remove(tmp_path / "spm.model")
  tokenizers.get_tokenizer(
    "sentencepiece",
    str(tmp_path),
    (t for p in tasks.source("synthetic_translate", "train", 300) for t in p),
    vocab_size=300,
  )
  edited = (tmp_path / "spm.model").read_bytes()
  with pytest.raises(ValueError, match="trained with another tokenizer"):
    trainer.train(c, str(tmp_path))
  assert (tmp_path / "spm.model").read_bytes() == edited
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [10]


def test_sigterm_during_start_up_exits_75_with_nothing_half_written(tmp_path):
  """A preemption before the first step (here: during imports and start-up) is still a
  preemption: exit 75, one line, no checkpoint, and the rerun completes."""
  import signal

  args = [
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}",
    "--config.optim.num_train_steps=10",
    "--config.eval.examples=4",
    "--config.optim.batch_size=8",
    "--config.mesh.data=1",
  ]
  proc = start_train(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  def catches_sigterm():  # its handler is in (a bit of SigCgt in /proc)
    with open(f"/proc/{proc.pid}/status") as f:
      caught = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)

  # not a fixed sleep (a loaded host starts slowly): as soon as a handler is in, which must be
  # before JAX is even loaded
  wait_until(catches_sigterm, 60, poll=0.005)
  with open(f"/proc/{proc.pid}/maps") as f:
    assert "jaxlib" not in f.read(), "SIGTERM is first caught after JAX has loaded"
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=180)[0]
  assert proc.returncode == errors.EXIT_PREEMPTED, out[-2000:]
  assert "Traceback" not in out and "during start-up" in out, out[-2000:]
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")
  r = run_cli(*args)
  assert r.returncode == 0, r.stderr[-2000:]


def test_a_full_disk_stops_in_one_line_and_the_run_resumes_once_space_is_freed(tmp_path):
  """A real tmpfs that fills up while checkpoints are written (needs mount rights; skipped
  without them): exit 74, one line naming the last good checkpoint, which is where the rerun
  resumes once there is room."""
  import re

  disk = tmp_path / "small"
  disk.mkdir()
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=12M", "tmpfs", str(disk)], capture_output=True
  )
  if mounted.returncode != 0:
    pytest.skip("cannot mount a tmpfs here")
  try:
    args = [
      "--config=configs/tiny.py",
      f"--workdir={disk / 'w'}",
      "--config.optim.num_train_steps=60",
      "--config.checkpoint.every=10",
      "--config.checkpoint.keep=10",
      "--config.eval.every=0",
      "--config.eval.examples=4",
      "--config.log_every=5",
    ]
    r = run_cli(*args)
    assert r.returncode == errors.EXIT_DISK_FULL, r.stderr[-3000:]
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("train:")]
    assert len(lines) == 1 and lines[0].startswith("disk full:"), r.stderr[:3000]
    good = re.search(r"the last good checkpoint is step (\d+)", lines[0])
    assert good, lines[0]
    subprocess.run(["mount", "-o", "remount,size=64M", str(disk)], check=True)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from step {good.group(1)}" in r.stdout + r.stderr
  finally:
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_workdir_whose_own_files_are_links_is_refused_and_their_targets_untouched(tmp_path):
  """.lock or config.json as a symbolic link: the run would truncate or overwrite what they
  point to."""
  for name in (".lock", "config.json", "metrics.jsonl"):
    w = tmp_path / name.strip(".")
    w.mkdir()
    victim = tmp_path / f"victim_{name.strip('.')}"
    victim.write_text("precious")
    (w / name).symlink_to(victim)
    with pytest.raises(errors.UserError, match=f"{re.escape(name)} is a symbolic link"):
      trainer.train(tiny(), str(w))
    assert victim.read_text() == "precious"
    assert sorted(os.listdir(w)) == [name]


def test_a_workdir_with_results_but_no_checkpoints_keeps_its_config(tmp_path):
  """Checkpoints deleted to free disk, best/ and final/ kept: another config would train over
  them (and keep the old best/ under the new config.json): refused, nothing changed."""
  import shutil

  trainer.train(tiny(num_train_steps=10), str(tmp_path))
  shutil.rmtree(tmp_path / "checkpoints")
  before = snapshot(tmp_path)
  with pytest.raises(ValueError, match=r"grouping\.variant: 'wgqa' -> 'mqa'"):
    trainer.train(tiny(num_train_steps=10, **{"grouping.variant": "mqa"}), str(tmp_path))
  assert snapshot(tmp_path) == before
