"""End-to-end uptraining on the built-in task: learning, sharding, resume, config errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from builders import losses, tiny, tiny_model_and_batch

from wgqa_jax.grouping import variants
from wgqa_jax.store import params_io
from wgqa_jax.training import steps as train_step, trainer
from wgqa_jax.training.config import base_config


def test_eight_fake_devices_are_there():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"


def test_loss_decreases_and_outputs_are_written(tmp_path):
  last = trainer.train(tiny(num_train_steps=40), str(tmp_path))
  l = losses(str(tmp_path))
  assert l[40] < 0.6 * l[5], l
  assert {"eval/loss", "eval/rouge1", "eval/rougeLsum", "wgqa/mean"} <= set(last)
  params, cfg = params_io.load(str(tmp_path / "final"))
  assert cfg.grouping.weights == "row" and cfg.kv_heads == 2
  # WGQA weights moved away from their 0.5 init during uptraining.
  assert np.abs(params["decoder"]["layers_0"]["self_attention"]["wk"] - 0.5).max() > 1e-4
  assert os.path.exists(tmp_path / "best" / params_io.PARAMS_FILE)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))


def test_sharded_data_fsdp_and_model_axes_match_one_device(tmp_path):
  one = tiny(**{"mesh.data": 1, "mesh.model": 1})
  eight = tiny(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.model": 2})
  trainer.train(one, str(tmp_path / "one"))
  trainer.train(eight, str(tmp_path / "eight"))
  a, b = losses(str(tmp_path / "one")), losses(str(tmp_path / "eight"))
  assert a.keys() == b.keys()
  np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)], rtol=2e-4)


def test_kill_and_resume_reproduces_uninterrupted_run(tmp_path):
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  trainer.train(tiny(), full)
  with pytest.raises(trainer.Preempted, match="saved step 10"):
    trainer.train(tiny(), cut, stop_after=10)  # "preempted" after step 10
  assert max(losses(cut)) == 10
  trainer.train(tiny(), cut)  # same command again: resumes at 10
  a, b = losses(full), losses(cut)
  assert sorted(a) == sorted(b) == [5, 10, 15, 20]
  np.testing.assert_allclose([b[k] for k in (15, 20)], [a[k] for k in (15, 20)], rtol=1e-6)


def test_resume_onto_a_different_mesh_with_remat_and_scanned_layers(tmp_path):
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  trainer.train(tiny(), full)
  with pytest.raises(trainer.Preempted):
    trainer.train(tiny(), cut, stop_after=10)
  # a 1-device checkpoint onto 8 devices with FSDP, rematerialised scanned layers: one layout
  trainer.train(
    tiny(
      **{
        "mesh.data": 1,
        "mesh.fsdp": 4,
        "mesh.model": 2,
        "model.remat": "full",
        "model.scan_layers": True,
      }
    ),
    cut,
  )
  a, b = losses(full), losses(cut)
  np.testing.assert_allclose([b[k] for k in (15, 20)], [a[k] for k in (15, 20)], rtol=2e-4)


def test_gradient_accumulation_matches_full_batch(tmp_path):
  trainer.train(tiny(num_train_steps=10), str(tmp_path / "a"))
  trainer.train(tiny(num_train_steps=10, grad_accum_steps=4), str(tmp_path / "b"))
  a, b = losses(str(tmp_path / "a")), losses(str(tmp_path / "b"))
  np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)], rtol=1e-4)


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("grouping.variant", "sgqa", "did you mean 'gqa'"),
    ("optim.batch_size", 6, "divisible by grad_accum_steps"),
    ("data.dataset", "imagenet", "choose from"),
    ("grouping.kv_heads", 3, "not divisible"),
    ("grouping.attention_noise", 0.2, "only applies to pgqa"),
    ("grouping.regroup_every", 5, "does not regroup"),
    ("model.param_dtype", "float16", "would need loss scaling"),
    ("optim.optimizer", "sgd", "choose from"),
  ],
)
def test_bad_config_values_fail_clearly(tmp_path, key, value, match):
  c = tiny(grad_accum_steps=4) if key == "optim.batch_size" else tiny()
  c.update_from_flattened_dict({key: value})
  with pytest.raises(ValueError, match=match):
    trainer.train(c, str(tmp_path))


def test_cli_rejects_unknown_config_key(tmp_path):
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "wgqa_jax.train",
      "--config=configs/tiny.py",
      "--config.optim.learning_rat=1e-3",
      f"--workdir={tmp_path}",
    ],
    capture_output=True,
    text=True,
    cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  )
  assert r.returncode == 2
  assert "learning_rat" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_sigterm_saves_a_checkpoint_and_the_rerun_finishes(tmp_path):
  """A real preemption: SIGTERM mid-run -> checkpoint at the current step -> resume completes."""
  import signal

  from conftest import run_train, start_train, wait_until

  args = [
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}",
    "--config.optim.num_train_steps=400",
    "--config.checkpoint.every=1000",
    "--config.eval.every=0",
    "--config.eval.examples=8",
    "--config.log_every=5",
    "--config.optim.batch_size=8",
    "--config.mesh.data=1",
  ]
  proc = start_train(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  metrics = tmp_path / "metrics.jsonl"
  wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 120, poll=0.2)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 75, out  # preempted after saving: a scheduler should rerun it
  assert "saved step" in out, out
  saved = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert saved and 10 <= saved[-1] < 400
  assert not (tmp_path / "final").exists()
  r = run_train(*args, "--config.optim.num_train_steps=400")
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"resumed from step {saved[-1]}" in r.stdout + r.stderr
  assert (tmp_path / "final" / params_io.PARAMS_FILE).exists()


def test_init_from_hf_checkpoint_converts_on_the_fly(tmp_path):
  from conftest import V10, make_hf_model

  hf = make_hf_model({**V10, "vocab_size": 260})  # bytes need 259 ids
  hf.save_pretrained(str(tmp_path / "hf"))
  trainer.train(
    tiny(
      init_from=str(tmp_path / "hf"),
      variant="gqa",
      kv_heads=2,
      num_train_steps=5,
      **{"checkpoint.every": 5},
    ),
    str(tmp_path / "run"),
  )
  params, cfg = params_io.load(str(tmp_path / "run" / "final"))
  assert cfg.kv_heads == 2 and cfg.grouping.weights == "none" and cfg.num_decoder_layers == 3
  assert params["decoder"]["layers_0"]["cross_attention"]["k"].shape == (32, 2, 12)
  assert params["encoder"]["layers_0"]["attention"]["k"].shape == (32, 4, 12)
  with pytest.raises(ValueError, match="only 97 embeddings"):
    hf_small = make_hf_model(V10)
    hf_small.save_pretrained(str(tmp_path / "hf97"))
    trainer.train(tiny(init_from=str(tmp_path / "hf97")), str(tmp_path / "run97"))


def test_every_config_file_loads_and_validates():
  import glob
  import importlib.util

  from wgqa_jax.training.validation import validate

  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  files = sorted(glob.glob(os.path.join(repo, "configs", "*.py")))
  assert {"paper.py", "tiny.py", "tiny_translate.py"} <= {os.path.basename(f) for f in files}
  paper_args = [
    f"{v},{size}"
    for size in ("small", "base")
    for v in [v for v in variants.VARIANTS if v != "asymgqa"] + ["simgqa200", "simgqa1000"]
  ]
  for f in files:
    spec = importlib.util.spec_from_file_location("cfg", f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = {
      "paper.py": paper_args,
      "gqa_paper.py": [
        "gqa,tiny",
        "mha,tiny",
        "wgqa,xl",
        "gqa,xxl",
        "gqa,small",
        "gqa,xl,cnn_dailymail",
        "wgqa,tiny,synthetic_summarize",
      ],
      "llama_uptrain.py": [
        "tiny",
        "tiny,synthetic_summarize",
        "meta-llama/Llama-2-7b-hf",
        "meta-llama/Llama-2-7b-hf,cnn_dailymail",
      ],
    }.get(os.path.basename(f), [None])
    for arg in args:
      c = mod.get_config() if arg is None else mod.get_config(arg)
      validate(c)
    assert "python -m wgqa_jax.train --config=configs/" in mod.__doc__, f
  spec = importlib.util.spec_from_file_location("paper", os.path.join(repo, "configs", "paper.py"))
  paper = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(paper)
  assert paper.get_config("simgqa200,base").grouping.regroup_every == 200
  assert paper.get_config("gqa,base").model.init_from == "t5-base"
  spec = importlib.util.spec_from_file_location(
    "gqa", os.path.join(repo, "configs", "gqa_paper.py")
  )
  gqa = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gqa)
  c = gqa.get_config("gqa,xl")  # alpha x the T5.1.1 pretraining steps, alpha overridable
  assert (c.optim.num_train_steps, c.data.objective) == (50_000, "span_corruption")
  c.recipe.alpha = 0.1
  assert c.optim.num_train_steps == 100_000
  with pytest.raises(ValueError, match="did you mean 'wgqa'"):
    validate(paper.get_config("wgq,small"))


@pytest.mark.parametrize(
  "variant,extra",
  [
    ("simgqa", {"regroup_every": 5}),
    ("asymgqa", {"group_sizes": (1, 3), "kv_heads": 2}),
    ("kdgqa", {}),
    ("dgqa", {}),
    ("pgqa", {}),
  ],
)
def test_every_variant_trains(tmp_path, variant, extra):
  last = trainer.train(tiny(variant=variant, num_train_steps=10, **extra), str(tmp_path))
  assert np.isfinite(last["eval/loss"])
  _, cfg = params_io.load(str(tmp_path / "final"))
  assert cfg.kv_heads == 2


def test_regroup_moves_query_heads_with_their_optimizer_moments():
  from wgqa_jax.models import t5
  from wgqa_jax.models.t5.config import preset

  cfg = preset("tiny", num_decoder_layers=1, num_encoder_layers=1)
  params = jax.tree.map(np.array, t5.init_params(cfg, jax.random.PRNGKey(0)))
  params, cfg = variants.from_mha(params, cfg, "gqa", 2)
  q = params["decoder"]["layers_0"]["cross_attention"]["q"]
  q[:, 3] = q[:, 0] + 1e-4  # head 3 is a twin of head 0 but sits in the other group
  state = {"params": params, "opt_state": ({"mu": params, "nu": params},)}
  new = variants.get("simgqa").regroup(state, cfg)
  nq = new["params"]["decoder"]["layers_0"]["cross_attention"]["q"]
  twins = [h for h in range(4) if np.allclose(nq[:, h], q[:, 0], atol=1e-3)]
  assert len(twins) == 2 and twins[0] // 2 == twins[1] // 2  # now in the same group
  o = params["decoder"]["layers_0"]["cross_attention"]["o"]
  no = new["params"]["decoder"]["layers_0"]["cross_attention"]["o"]
  perm = [int(np.argmin(np.abs(o - no[h]).sum((1, 2)))) for h in range(4)]
  assert sorted(perm) == [0, 1, 2, 3] and perm != [0, 1, 2, 3]
  np.testing.assert_array_equal(nq, q[:, perm])  # q and o moved together
  mu = new["opt_state"][0]["mu"]["decoder"]["layers_0"]["cross_attention"]["q"]
  np.testing.assert_array_equal(mu, nq)
  np.testing.assert_array_equal(
    new["params"]["decoder"]["layers_0"]["cross_attention"]["k"],
    params["decoder"]["layers_0"]["cross_attention"]["k"],
  )


def test_config_docs_are_generated_and_complete():
  from wgqa_jax.training.config import config_docs, keys

  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  docs = config_docs()
  assert open(os.path.join(repo, "docs", "CONFIG.md")).read() == docs, (
    "docs/CONFIG.md is stale: python -m wgqa_jax.train_config > docs/CONFIG.md"
  )
  assert len(keys(base_config())) > 30
  for key in keys(base_config()):
    row = [l for l in docs.splitlines() if l.startswith(f"| `{key}` |")]
    assert row and not row[0].endswith("|  |"), f"config key {key} has no documentation"


def test_nan_guard_skips_the_update():
  import optax

  cfg, params, batch = tiny_model_and_batch()
  tx = optax.adamw(1e-2)
  step = jax.jit(train_step.make_train_step(cfg, tiny().optim, tx))
  state = {
    "step": jax.numpy.zeros((), jax.numpy.int32),
    "params": params,
    "opt_state": tx.init(params),
  }
  good, out = step(state, batch, jax.random.PRNGKey(0))
  assert float(out["skipped"]) == 0 and int(good["step"]) == 1
  assert not np.allclose(
    good["params"]["decoder"]["layers_0"]["mlp"]["wo"], params["decoder"]["layers_0"]["mlp"]["wo"]
  )
  bad_params = jax.tree.map(lambda x: x, params)
  bad_params["encoder"]["final_norm"]["scale"] = params["encoder"]["final_norm"]["scale"] * np.nan
  bad = {**state, "params": bad_params}
  new, out = step(bad, batch, jax.random.PRNGKey(0))
  assert float(out["skipped"]) == 1 and int(new["step"]) == 1
  for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(bad_params)):
    np.testing.assert_array_equal(a, b)  # untouched (NaN stays NaN, nothing else moved)
  for a, b in zip(jax.tree.leaves(new["opt_state"]), jax.tree.leaves(state["opt_state"])):
    np.testing.assert_array_equal(a, b)


def test_packed_run_learns_with_less_padding_and_resumes_exactly(tmp_path):
  """Packed training, tokenized in grain worker processes: fewer pad tokens than unpacked,
  learns, and a run preempted mid-window resumes onto the very same batches."""
  kw = dict(
    num_train_steps=20,
    **{
      "data.pack": True,
      "data.pack_window": 64,
      "data.workers": 2,
      "data.max_input_length": 192,
      "data.max_target_length": 64,
    },
  )
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  last = trainer.train(tiny(**kw), full)
  with pytest.raises(trainer.Preempted):
    trainer.train(tiny(**kw), cut, stop_after=10)
  saved = json.load(open(os.path.join(cut, "checkpoints", "10", "data", "metadata")))
  assert saved["process_count"] == 1 and saved["positions"][0] != [10, 0]  # rows, not steps
  trainer.train(tiny(**kw), cut)
  a, b = losses(full), losses(cut)
  np.testing.assert_allclose([b[k] for k in (15, 20)], [a[k] for k in (15, 20)], rtol=1e-6)
  unpacked = trainer.train(
    tiny(**{k: v for k, v in kw.items() if k != "data.pack"}), str(tmp_path / "unpacked")
  )
  assert last["train/padding"] < 0.7 * unpacked["train/padding"]
  assert a[20] < a[5]


def test_tfds_dataset_trains_and_evaluates_through_the_real_reader(tmp_path):
  """A CNN/DailyMail-shaped TFDS dataset written by the real builder: trained on with a
  sentencepiece vocabulary and grain worker processes, then `evaluate` finds the data through
  the run's own data_dir."""
  from wgqa_jax.data import local_tfds
  from wgqa_jax.tools import evaluate

  data_dir = str(tmp_path / "tfds")
  local_tfds.build("cnn_dailymail", data_dir, {"train": 64, "validation": 8, "test": 8})
  w = str(tmp_path / "run")
  last = trainer.train(
    tiny(
      num_train_steps=6,
      **{
        "data.dataset": "cnn_dailymail",
        "data.data_dir": data_dir,
        "data.tokenizer": "sentencepiece",
        "data.workers": 2,
        "data.max_input_length": 128,
        "data.max_target_length": 32,
      },
    ),
    w,
  )
  assert np.isfinite(last["eval/loss"]) and "eval/rougeLsum" in last
  out = str(tmp_path / "test.json")
  assert (
    evaluate.main(
      [
        f"--checkpoint={w}",
        "--split=test",
        "--num_examples=4",
        "--bootstrap=10",
        "--num_beams=1",
        f"--out={out}",
      ]
    )
    == 0
  )
  result = json.load(open(out))
  assert result["dataset"] == "cnn_dailymail" and len(result["predictions"]) == 4
  assert all(s.startswith("summarize: ") for s in result["inputs"])
