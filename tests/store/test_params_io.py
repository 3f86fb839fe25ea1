"""Our params directory (wgqa_jax.store.params_io): every read is verified (a CRC-32 per tensor
written
at save time, finite values), saves are atomic; faults injected into real files."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import V10, make_hf_model

from wgqa_jax import models
from wgqa_jax.grouping import variants
from wgqa_jax.grouping.variants import Grouping
from wgqa_jax.store import hf as hf_io, params_io

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def saved(tmp_path):
  cfg = models.preset("tiny")
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(0)))
  out = tmp_path / "params"
  params_io.save(params, cfg, str(out))
  return out, params, cfg


def garble(path, offset_from_end=4096, n=64):
  """Overwrite n bytes inside the tensor data with other bytes, keeping the file's size."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size - offset_from_end)
    data = bytearray(f.read(n))
    f.seek(size - offset_from_end)
    f.write(bytes(b ^ 0x5A for b in data))


def test_a_saved_dir_loads_back_exactly(saved):
  out, params, cfg = saved
  got, got_cfg = params_io.load(str(out))
  assert got_cfg == cfg
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert not [p for p in os.listdir(out.parent) if ".tmp-" in p]


def test_garbled_bytes_are_refused_naming_the_file_and_tensor(saved):
  out, _, _ = saved
  garble(out / params_io.PARAMS_FILE)
  with pytest.raises(ValueError, match=r"params.safetensors is damaged: .* does not match"):
    params_io.load(str(out))


def test_non_finite_values_are_refused_even_without_checksums(saved, tmp_path):
  out, params, cfg = saved
  from safetensors.numpy import save_file

  flat = params_io.flatten(params)
  key = sorted(flat)[3]
  flat[key] = flat[key].copy()
  flat[key].reshape(-1)[0] = np.nan
  save_file(flat, str(out / params_io.PARAMS_FILE))  # no checksums: an older params dir
  with pytest.raises(ValueError, match=f"{key} holds NaN or infinite values"):
    params_io.load(str(out))


def test_convert_and_evaluate_refuse_a_damaged_params_dir_in_one_line(saved, tmp_path):
  out, _, _ = saved
  garble(out / params_io.PARAMS_FILE)
  for cmd in (
    ["wgqa_jax.convert", f"--params={out}", "--fold", f"--out={tmp_path / 'folded'}"],
    ["wgqa_jax.evaluate", f"--checkpoint={out}", "--num_examples=2", "--tokenizer=bytes"],
  ):
    r = subprocess.run(
      [sys.executable, "-m", *cmd],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, "XLA_FLAGS": ""},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "is damaged" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "folded").exists()


def test_a_save_swaps_the_directory_whole_and_cleans_a_killed_one(saved):
  out, params, cfg = saved
  (out / "generation.json").write_text(json.dumps({"stale": True}))  # the old model's
  os.makedirs(out.parent / f".{out.name}.tmp-999")  # a save killed midway
  params_io.save(params, cfg, str(out))
  assert not (out / "generation.json").exists()
  assert sorted(os.listdir(out.parent)) == [out.name]


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


def test_error_params_do_not_match_config(tmp_path):
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  params, cfg = variants.from_mha(*hf_io.from_hf(str(tmp_path / "hf")), "gqa", 2)
  params_io.save(params, cfg.replace(grouping=Grouping(kv_heads=4)), str(tmp_path / "bad"))
  with pytest.raises(ValueError, match=r"k: has \(32, 2, 12\), config implies \(32, 4, 12\)"):
    params_io.load(str(tmp_path / "bad"))
  with pytest.raises(FileNotFoundError, match="not a wgqa_jax params directory"):
    params_io.load(str(tmp_path / "hf"))
