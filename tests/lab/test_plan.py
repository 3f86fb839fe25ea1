"""The planner: the real train step compiled for N fake devices, XLA's per-device memory."""

import json
import os
import subprocess
import sys

import pytest

from wgqa_jax.lab import plan
from wgqa_jax.store.resolve import resolve
from wgqa_jax.training.config import base_config, tiny_config


def run_plan(*flags):
  return subprocess.run(
    [sys.executable, "-m", "wgqa_jax.plan", *flags], capture_output=True, text=True, timeout=300
  )


def test_cli_prints_a_table_and_one_json_line_for_n_devices():
  r = run_plan(
    "--config=configs/llama_tiny.py",
    "--devices=4",
    "--config.mesh.data=1",
    "--config.mesh.fsdp=-1",
    "--config.optim.batch_size=8",
    "--config.model.remat=full",
    "--device_memory_gib=0.001",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["mesh"] == {"data": 1, "fsdp": 4, "model": 1}
  assert out["remat"] == "full" and out["batch"]["inputs"][0] == 8
  b = out["per_device_bytes"]
  assert b["total"] == b["arguments"] + b["temp"] + b["outputs"] > 0
  # params (f32) split 4 ways; AdamW's two moments likewise
  assert b["params"] == pytest.approx(out["params"] * 4 / 4, rel=0.05)
  assert b["opt_state"] == pytest.approx(2 * b["params"], rel=0.01)
  assert out["fits"] is False  # 1 MiB devices
  assert "total / device" in r.stdout and "fits" in r.stdout


@pytest.mark.parametrize(
  "flags,message",
  [
    (["--config=configs/tiny.py"], "pass --devices=N"),
    (
      ["--config=configs/tiny.py", "--devices=3", "--config.mesh.model=2"],
      "does not divide the 3 devices",
    ),
    (
      [
        "--config=configs/tiny.py",
        "--devices=8",
        "--config.mesh.fsdp=8",
        "--config.mesh.data=1",
        "--config.optim.batch_size=12",
      ],
      "make the batch a multiple of 8",
    ),
    (["--config=configs/scale.py:llama-3", "--devices=8"], "choose from"),
    (
      ["--config=configs/tiny.py", "--devices=1", "--calibration=/any/calibration.npz"],
      "--calibration is read only to plan grouping.layer_budget=proxy",
    ),
  ],
)
def test_bad_input_is_one_line_and_exit_2(flags, message):
  r = run_plan(*flags)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_fsdp_divides_params_and_optimizer_state_per_device():
  """On the 8 devices of this process: FSDP 8 holds 1/8 of what pure data parallelism holds."""

  def one(**mesh):
    c = tiny_config()
    c.optim.batch_size = 8
    c.mesh.update(mesh)
    return plan.plan(c)["per_device_bytes"]

  dp, fsdp = one(data=8, fsdp=1), one(data=1, fsdp=8)
  assert fsdp["params"] < dp["params"] / 6
  assert fsdp["opt_state"] < dp["opt_state"] / 6
  assert fsdp["arguments"] < dp["arguments"] / 4


def test_the_model_config_is_the_runs_grouped_config_with_the_accelerators_matmuls():
  c = base_config()
  c.model.arch, c.model.remat, c.model.scan_layers = "llama-2-7b", "dots", True
  c.grouping.variant, c.grouping.kv_heads = "wgqa", 8
  cfg = plan.model_config(c, resolve(c.model.init_from, c.model.arch))
  assert cfg.kv_heads == 8 and cfg.grouping.weights == "row" and cfg.num_layers == 32
  assert cfg.remat == "dots" and cfg.scan_layers and not cfg.transpose_weight_grad_on_cpu


def test_a_calibrated_variant_is_planned_with_its_calibration_step():
  """svd first runs the MHA model on a batch: the planner compiles that step too (scanned when
  the run's layers are), and a run fits only if both steps do."""

  def config(**model):
    c = tiny_config()
    c.optim.batch_size = 8
    c.mesh.update(data=1, fsdp=8)
    c.grouping.variant = "svd"
    c.model.update(model)
    return c

  r = plan.plan(config())
  assert plan.plan(config(scan_layers=True))["calibration_per_device_bytes"] > 0
  assert plan.plan(tiny_config())["calibration_per_device_bytes"] is None  # wgqa: none
  assert "calibration / device" in plan.table(r)
  calib, peak = (
    r["calibration_per_device_bytes"],
    max(r["per_device_bytes"]["total"], r["calibration_per_device_bytes"]),
  )
  assert plan.plan(config(), peak * 1.01 / plan.GIB, 1.0)["fits"]
  assert not plan.plan(config(), calib * 0.99 / plan.GIB, 1.0)["fits"]


@pytest.mark.parametrize("variant", ["svd", "mla"])
def test_a_layer_budget_run_is_planned_with_the_kv_heads_it_trains(tmp_path, variant):
  """grouping.layer_budget=proxy gives each attention module its own G (mla: latent rank): the
  planner builds the model through the trainer's own conversion, so it plans those (params and
  KV cache), not a uniform kv_heads."""
  import math

  import jax
  from builders import proxy_budget

  from wgqa_jax import decoding
  from wgqa_jax.store import params_io
  from wgqa_jax.training import trainer

  c = proxy_budget(
    num_train_steps=2, log_every=1, **{"checkpoint.every": 2, "grouping.variant": variant}
  )
  trainer.train(c, str(tmp_path))
  params, trained = params_io.load(str(tmp_path / "final"))
  heads = dict(trained.grouping.module_latent_rank or trained.grouping.module_kv_heads)
  assert len(set(heads.values())) > 1  # the budget was spread unevenly

  calibration = str(tmp_path / "calibration.npz")
  planned = plan.model_config(c, resolve(c.model.init_from, c.model.arch), calibration)
  assert planned.grouping == trained.grouping
  r = plan.plan(c, calibration_file=calibration)
  assert r["params"] == sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  assert r["kv_cache_bytes_per_token"] == decoding.cache_bytes_per_token(trained)
  # the planned program is the per-module one (the same budget in all as a uniform G)
  assert r["grouping"] == trained.grouping.describe(trained.num_heads)
  what = "MLA latent rank " if variant == "mla" else "KV heads per module "
  assert what + ",".join(map(str, heads.values())) in r["grouping"]


def test_the_planner_places_params_by_the_configs_sharding_rules():
  def params_per_device(**rules):
    c = tiny_config()
    c.optim.batch_size = 8
    c.mesh.update(data=1, fsdp=4, model=2, **rules)
    return plan.plan(c)["per_device_bytes"]["params"]

  split, unsplit_mlp = params_per_device(), params_per_device(param_rules="mlp=none")
  assert unsplit_mlp > split * 1.1  # the MLP weights are now only fsdp-split


def test_the_planner_names_every_attention_form():
  from wgqa_jax.models.config_file import ATTENTIONS

  assert set(plan.ATTENTION_NOTE) == set(ATTENTIONS)


def test_fake_devices_compile_as_a_gpu_would(monkeypatch):
  """The planner's XLA flags: N devices, the GPU-like passes and schedule, the user's other
  flags kept, an earlier device count replaced."""
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3 --xla_dump_to=/tmp/x")
  plan.use_fake_devices(8)  # backends are up here: only the environment changes
  flags_ = os.environ["XLA_FLAGS"].split()
  assert "--xla_dump_to=/tmp/x" in flags_ and "--xla_force_host_platform_device_count=8" in flags_
  assert "--xla_force_host_platform_device_count=3" not in flags_
  assert set(plan.GPU_LIKE_FLAGS) <= set(flags_)
  assert "--xla_cpu_enable_concurrency_optimized_scheduler=false" in plan.GPU_LIKE_FLAGS
