"""Checkpoint files: HF -> ours -> HF round trips, our format, the CLI, and clear errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import V10, batch, hf_logits, make_hf_model
from wgqa_jax import params_io, variants
from wgqa_jax import hf as hf_io
from wgqa_jax.models import t5
from wgqa_jax.models.t5_config import T5Config
from wgqa_jax.variants import Grouping


def _load_hf(path):
  from transformers import T5ForConditionalGeneration
  return T5ForConditionalGeneration.from_pretrained(path).eval()


def test_mha_export_round_trip_is_exact(hf_checkpoint, tmp_path):
  hf, path = hf_checkpoint
  params, cfg = hf_io.from_hf(path)
  hf_io.save_hf(params, cfg, str(tmp_path))
  back = _load_hf(str(tmp_path))
  want = {k: v.numpy() for k, v in hf.state_dict().items()}
  got = {k: v.numpy() for k, v in back.state_dict().items()}
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  ids, mask, dec = batch(cfg.vocab_size)
  np.testing.assert_array_equal(hf_logits(back, ids, dec, mask), hf_logits(hf, ids, dec, mask))


@pytest.mark.parametrize("variant", ["gqa", "mqa", "wgqa"])
def test_grouped_export_loads_in_hf_and_matches(hf_checkpoint, tmp_path, variant):
  _, path = hf_checkpoint
  params, cfg = variants.from_mha(*hf_io.from_hf(path), variant, 2,
                                  group_encoder=(variant == "wgqa"))
  if variant == "wgqa":  # uneven, as after uptraining
    for s, l, m in variants.grouped_paths(cfg):
      params[s][l][m]["wv"] = params[s][l][m]["wv"] * np.linspace(0.2, 1.5, cfg.num_heads)
  hf_io.save_hf(params, cfg, str(tmp_path))
  back = _load_hf(str(tmp_path))
  ids, mask, dec = batch(cfg.vocab_size)
  ours = np.asarray(t5.T5(cfg).apply({"params": params}, ids, dec, mask))
  np.testing.assert_allclose(hf_logits(back, ids, dec, mask), ours, rtol=1e-5, atol=1e-5)


def test_our_format_round_trip(tmp_path):
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  params, cfg = variants.from_mha(*hf_io.from_hf(str(tmp_path / "hf")), "randwgqa", 2, seed=7)
  params_io.save(params, cfg, str(tmp_path / "ours"))
  params2, cfg2 = params_io.load(str(tmp_path / "ours"))
  assert cfg2 == cfg
  flat, flat2 = params_io.flatten(params), params_io.flatten(params2)
  assert set(flat) == set(flat2)
  for k in flat:
    np.testing.assert_array_equal(flat[k], flat2[k])


def test_pytorch_bin_checkpoint(tmp_path):
  import torch
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path))
  os.remove(tmp_path / "model.safetensors")
  torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
  params, cfg = hf_io.from_hf(str(tmp_path))
  ids, mask, dec = batch(cfg.vocab_size)
  np.testing.assert_allclose(t5.T5(cfg).apply({"params": params}, ids, dec, mask),
                             hf_logits(hf, ids, dec, mask), rtol=1e-5, atol=1e-5)


def test_cli_convert_fold_export(tmp_path):
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  run = lambda *a: subprocess.run([sys.executable, "-m", "wgqa_jax.convert", *a],
                                  capture_output=True, text=True)
  r = run(f"--hf={tmp_path / 'hf'}", f"--out={tmp_path / 'w'}", "--variant=wgqa", "--kv_heads=2")
  assert r.returncode == 0, r.stderr
  assert "4 heads, 2 KV heads, WGQA row weights" in r.stdout
  r = run(f"--params={tmp_path / 'w'}", "--fold", f"--out={tmp_path / 'f'}",
          f"--export_hf={tmp_path / 'hf_out'}")
  assert r.returncode == 0, r.stderr
  fparams, fcfg = params_io.load(str(tmp_path / "f"))
  assert fcfg.grouping.weights == "none" and fcfg.kv_heads == 2
  wparams, wcfg = params_io.load(str(tmp_path / "w"))
  ids, mask, dec = batch(fcfg.vocab_size)
  ours = np.asarray(t5.T5(wcfg).apply({"params": wparams}, ids, dec, mask))
  np.testing.assert_allclose(hf_logits(_load_hf(str(tmp_path / "hf_out")), ids, dec, mask), ours,
                             rtol=1e-5, atol=1e-5)
  r = run(f"--hf={tmp_path / 'hf'}", f"--out={tmp_path / 'x'}", "--variant=gqa", "--kv_heads=3")
  assert r.returncode == 2 and "not divisible" in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
  r = run(f"--hf={tmp_path / 'hf'}", f"--out={tmp_path / 'x'}", "--variant=gqa", "--kv_heads=3",
          "--debug")
  assert r.returncode != 0 and "Traceback" in r.stderr


# ------------------------------------------------------------------------------ errors ----
def test_error_missing_directory():
  with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
    hf_io.load_hf("./does/not/exist")


def test_error_directory_without_weights(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    hf_io.load_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(T5Config().to_hf()))
  with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
    hf_io.load_hf(str(tmp_path))


def test_error_unreachable_hub_id(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(FileNotFoundError, match="could not be fetched"):
    hf_io.load_hf("t5-small-that-is-not-cached")


def test_error_missing_key_and_shape_mismatch():
  hf = make_hf_model(V10)
  cfg = hf_io.config_from_hf(hf.config.to_dict(), {})
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  broken = dict(sd)
  del broken["decoder.block.1.layer.1.EncDecAttention.v.weight"]
  with pytest.raises(KeyError, match="decoder.block.1.layer.1.EncDecAttention.v.weight"):
    hf_io.hf_to_params(broken, cfg)
  with pytest.raises(ValueError, match="config and weights disagree"):
    hf_io.hf_to_params(sd, cfg.replace(d_ff=64))


def test_error_params_do_not_match_config(tmp_path):
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  params, cfg = variants.from_mha(*hf_io.from_hf(str(tmp_path / "hf")), "gqa", 2)
  params_io.save(params, cfg.replace(grouping=Grouping(kv_heads=4)), str(tmp_path / "bad"))
  with pytest.raises(ValueError, match=r"k: has \(32, 2, 12\), config implies \(32, 4, 12\)"):
    params_io.load(str(tmp_path / "bad"))
  with pytest.raises(FileNotFoundError, match="not a wgqa_jax params directory"):
    params_io.load(str(tmp_path / "hf"))


def test_error_bad_config_values():
  with pytest.raises(ValueError, match="unknown keys"):
    T5Config.from_dict({"d_model": 8, "num_kv_head": 2})
  with pytest.raises(ValueError, match="weights must be one of"):
    T5Config(grouping=Grouping(weights="diagonal"))
  with pytest.raises(ValueError, match="feed_forward_proj"):
    T5Config(feed_forward_proj="gated-gelu-x")
  with pytest.raises(ValueError, match="needs MHA params"):
    variants.from_mha({}, T5Config(grouping=Grouping(kv_heads=2)), "gqa", 2)
  with pytest.raises(ValueError, match=r"unknown variant 'sgqa' \(did you mean 'gqa'\?\)"):
    variants.get("sgqa")


def test_config_files_of_the_flat_layout_still_load(tmp_path):
  """wgqa_config.json written before the grouping section (flat num_kv_heads, wgqa, ...)."""
  flat = {**T5Config().to_dict(), "num_kv_heads": 2, "wgqa": "row", "kv_group_sizes": None,
          "group_encoder": True}
  del flat["grouping"]
  cfg = T5Config.from_dict(flat)
  assert cfg.grouping == Grouping(kv_heads=2, weights="row", group_encoder=True)


# ------------------------------------------------------------------------- outputs ----
def run_convert(*args):
  return subprocess.run([sys.executable, "-m", "wgqa_jax.convert", *args], capture_output=True,
                        text=True, env={**os.environ, "XLA_FLAGS": ""})


def tree_bytes(d):
  return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
          for r, _, fs in os.walk(d) for f in fs}


def test_outputs_are_never_clobbered_without_overwrite(tmp_path):
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  src = tree_bytes(tmp_path / "hf")
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "mine.txt").write_text("keep me")
  (tmp_path / "file").write_text("a file")
  cases = [([f"--out={tmp_path / 'hf'}", "--overwrite"], "would overwrite the input"),
           ([f"--export_hf={tmp_path / 'hf'}", "--overwrite"], "would overwrite the input"),
           ([f"--out={tmp_path / 'taken'}"], "exists; pass --overwrite"),
           ([f"--export_hf={tmp_path / 'taken'}"], "exists; pass --overwrite"),
           ([f"--out={tmp_path / 'file'}", "--overwrite"], "is a file"),
           ([f"--out={tmp_path / 'a'}", f"--export_hf={tmp_path / 'a'}"], "same directory")]
  for args, needle in cases:
    r = run_convert(f"--hf={tmp_path / 'hf'}", "--variant=gqa", "--kv_heads=2", *args)
    assert r.returncode == 2 and needle in r.stderr, (args, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert tree_bytes(tmp_path / "hf") == src
  assert tree_bytes(tmp_path / "taken") == {"mine.txt": b"keep me"}
  assert not (tmp_path / "a").exists()


def test_overwriting_an_export_replaces_it_whole(tmp_path):
  """An old sharded export (index + shards) is replaced, not mixed: reading the new export
  back gives the new weights."""
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  out = tmp_path / "export"
  hf.save_pretrained(str(out), max_shard_size="20KB")  # an old, sharded export
  assert any(f.endswith(".index.json") for f in os.listdir(out))
  r = run_convert(f"--hf={tmp_path / 'hf'}", "--variant=mqa", f"--export_hf={out}",
                  "--overwrite")
  assert r.returncode == 0, r.stderr[-2000:]
  files = sorted(os.listdir(out))
  assert "model.safetensors" in files and not [f for f in files if "index" in f or "-of-" in f]
  params, cfg = hf_io.from_hf(str(out))
  mqa, mcfg = variants.from_mha(*hf_io.from_hf(str(tmp_path / "hf")), "mqa", 1)
  expanded, _ = variants.expand_to_mha(mqa, mcfg)
  got, want = params_io.flatten(params), params_io.flatten(expanded)
  assert set(got) == set(want)
  for k in got:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)


def test_an_export_hf_cannot_hold_is_refused_before_anything_is_written(tmp_path):
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  r = run_convert(f"--hf={tmp_path / 'hf'}", "--variant=kdgqa", "--kv_heads=2",
                  f"--out={tmp_path / 'out'}", f"--export_hf={tmp_path / 'exp'}")
  if r.returncode == 0:  # HF can hold this variant: both written
    assert (tmp_path / "out").exists() and (tmp_path / "exp").exists()
  else:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "exp").exists()
