"""The conversion CLI (python -m wgqa_jax.convert): convert, fold and export for both families, and
its outputs, never clobbered and replaced whole."""

import os
import re
import subprocess
import sys

import hf_llama
import numpy as np
from conftest import V10, batch, hf_logits, make_hf_model

from wgqa_jax.grouping import variants
from wgqa_jax.models import t5
from wgqa_jax.store import hf as hf_io, params_io


def _load_hf(path):
  from transformers import T5ForConditionalGeneration

  return T5ForConditionalGeneration.from_pretrained(path).eval()


def test_cli_convert_fold_export(tmp_path):
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  run = lambda *a: subprocess.run(
    [sys.executable, "-m", "wgqa_jax.convert", *a], capture_output=True, text=True
  )
  r = run(f"--hf={tmp_path / 'hf'}", f"--out={tmp_path / 'w'}", "--variant=wgqa", "--kv_heads=2")
  assert r.returncode == 0, r.stderr
  assert "4 heads, 2 KV heads, WGQA row weights" in r.stdout
  r = run(
    f"--params={tmp_path / 'w'}",
    "--fold",
    f"--out={tmp_path / 'f'}",
    f"--export_hf={tmp_path / 'hf_out'}",
  )
  assert r.returncode == 0, r.stderr
  fparams, fcfg = params_io.load(str(tmp_path / "f"))
  assert fcfg.grouping.weights == "none" and fcfg.kv_heads == 2
  wparams, wcfg = params_io.load(str(tmp_path / "w"))
  ids, mask, dec = batch(fcfg.vocab_size)
  ours = np.asarray(t5.T5(wcfg).apply({"params": wparams}, ids, dec, mask))
  np.testing.assert_allclose(
    hf_logits(_load_hf(str(tmp_path / "hf_out")), ids, dec, mask), ours, rtol=1e-5, atol=1e-5
  )
  r = run(f"--hf={tmp_path / 'hf'}", f"--out={tmp_path / 'x'}", "--variant=gqa", "--kv_heads=3")
  assert r.returncode == 2 and "not divisible" in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
  r = run(
    f"--hf={tmp_path / 'hf'}", f"--out={tmp_path / 'x'}", "--variant=gqa", "--kv_heads=3", "--debug"
  )
  assert r.returncode != 0 and "Traceback" in r.stderr


# ------------------------------------------------------------------------- outputs ----
def run_convert(*args):
  return subprocess.run(
    [sys.executable, "-m", "wgqa_jax.convert", *args],
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_FLAGS": ""},
  )


def tree_bytes(d):
  return {
    os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
    for r, _, fs in os.walk(d)
    for f in fs
  }


def test_outputs_are_never_clobbered_without_overwrite(tmp_path):
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  src = tree_bytes(tmp_path / "hf")
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "mine.txt").write_text("keep me")
  (tmp_path / "file").write_text("a file")
  cases = [
    ([f"--out={tmp_path / 'hf'}", "--overwrite"], "would overwrite the input"),
    ([f"--export_hf={tmp_path / 'hf'}", "--overwrite"], "would overwrite the input"),
    ([f"--out={tmp_path / 'taken'}"], "exists; pass --overwrite"),
    ([f"--export_hf={tmp_path / 'taken'}"], "exists; pass --overwrite"),
    ([f"--out={tmp_path / 'file'}", "--overwrite"], "is a file"),
    ([f"--out={tmp_path / 'a'}", f"--export_hf={tmp_path / 'a'}"], "same path"),
    (["--export=hf"], "go together"),
    ([f"--export_hf={tmp_path / 'a'}", "--export=hf", f"--export_to={tmp_path / 'a'}"], "not both"),
    (["--export=gguf", f"--export_to={tmp_path / 'taken'}"], "name it *.gguf"),
    (["--export=gguf", f"--export_to={tmp_path / 'file.gguf'}", "--overwrite"], "not a GGUF"),
    (["--export=decilm", f"--export_to={tmp_path / 'a'}"], "--export=decilm is for a Llama"),
  ]
  (tmp_path / "file.gguf").write_text("not a gguf")
  for args, needle in cases:
    r = run_convert(f"--hf={tmp_path / 'hf'}", "--variant=gqa", "--kv_heads=2", *args)
    assert r.returncode == 2 and needle in r.stderr, (args, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert tree_bytes(tmp_path / "hf") == src
  assert tree_bytes(tmp_path / "taken") == {"mine.txt": b"keep me"}
  assert (tmp_path / "file.gguf").read_text() == "not a gguf"
  assert not (tmp_path / "a").exists()


def test_overwriting_an_export_replaces_it_whole(tmp_path):
  """An old sharded export (index + shards) is replaced, not mixed: reading the new export
  back gives the new weights."""
  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  out = tmp_path / "export"
  hf.save_pretrained(str(out), max_shard_size="20KB")  # an old, sharded export
  assert any(f.endswith(".index.json") for f in os.listdir(out))
  r = run_convert(f"--hf={tmp_path / 'hf'}", "--variant=mqa", f"--export_hf={out}", "--overwrite")
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
  r = run_convert(
    f"--hf={tmp_path / 'hf'}",
    "--variant=kdgqa",
    "--kv_heads=2",
    f"--out={tmp_path / 'out'}",
    f"--export_hf={tmp_path / 'exp'}",
  )
  if r.returncode == 0:  # HF can hold this variant: both written
    assert (tmp_path / "out").exists() and (tmp_path / "exp").exists()
  else:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "exp").exists()


def test_convert_cli_uptrain_ready_wgqa_then_fold_and_export(tmp_path):
  """convert --hf (family from config.json) -> WGQA params dir -> --fold --export_hf: a native
  GQA directory transformers loads, with our params dir's logits."""
  from transformers import AutoModelForCausalLM

  from wgqa_jax.store import params_io
  from wgqa_jax.tools import convert

  src = hf_llama.save(hf_llama.hf_model("llama", 4), tmp_path / "hf")
  wgqa_dir, out = str(tmp_path / "wgqa"), str(tmp_path / "export")
  assert (
    convert.main(
      [f"--hf={src}", "--variant=randwgqa", "--kv_heads=2", "--seed=1", f"--out={wgqa_dir}"]
    )
    == 0
  )
  params, cfg = params_io.load(wgqa_dir)
  assert type(cfg).__name__ == "LlamaConfig" and cfg.grouping.weights == "row"
  assert convert.main([f"--params={wgqa_dir}", "--fold", f"--export_hf={out}"]) == 0
  exported = AutoModelForCausalLM.from_pretrained(out).eval()
  assert exported.config.num_key_value_heads == 2
  ids, mask = hf_llama.batch()
  hf_llama.assert_close_where_valid(
    hf_llama.ours(params, cfg, ids, mask), hf_llama.hf_logits(exported, ids, mask), mask
  )
  # the exported GQA-2 checkpoint re-groups to MQA
  assert convert.main([f"--hf={out}", "--variant=mqa", f"--out={tmp_path / 'mqa'}"]) == 0
  assert params_io.load(str(tmp_path / "mqa"))[1].kv_heads == 1


def test_calibrated_variant_converts_from_a_statistics_file_and_needs_one(tmp_path):
  import pytest

  from wgqa_jax.tools import convert
  from wgqa_jax.training import calibration

  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path / "hf"))
  params, cfg = hf_io.from_hf(str(tmp_path / "hf"))
  ids, _, dec = batch(cfg.vocab_size)
  stats = calibration.collect(
    params,
    cfg,
    iter([{"inputs": ids.astype(np.int32), "targets": dec.astype(np.int32)}]),
    1,
    desc=None,
  )
  calibration.save(str(tmp_path / "calibration.npz"), stats)
  args = [f"--hf={tmp_path / 'hf'}", f"--out={tmp_path / 'svd'}", "--variant=svd", "--kv_heads=2"]
  with pytest.raises(
    ValueError,
    match="--variant=svd merges by what the heads compute: pass "
    "--calibration=WORKDIR/calibration.npz",
  ):
    convert.main(args)
  assert not (tmp_path / "svd").exists()
  assert convert.main(args + [f"--calibration={tmp_path / 'calibration.npz'}"]) == 0
  got, got_cfg = params_io.load(str(tmp_path / "svd"))
  want, want_cfg = variants.from_mha(params, cfg, "svd", 2, calibration=stats)
  assert got_cfg == want_cfg
  flat_got, flat_want = params_io.flatten(got), params_io.flatten(want)
  for k in flat_want:
    np.testing.assert_allclose(flat_got[k], flat_want[k], rtol=1e-6, err_msg=str(k))


def test_a_flag_that_cannot_apply_is_refused_and_nothing_is_written(tmp_path):
  """Flags convert would have ignored, and outputs it must not replace: each one line (a
  UserError), before anything is written; the input and the user's files untouched."""
  import jax
  import pytest

  from wgqa_jax import models
  from wgqa_jax.core import errors
  from wgqa_jax.tools import convert

  cfg = models.preset("llama-tiny")
  params = models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(0))
  mha = tmp_path / "mha"
  params_io.save(params, cfg, str(mha))
  (tmp_path / "stats.npz").write_bytes(b"")
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  (tmp_path / "mha_link").symlink_to(mha)
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  p, out = f"--params={mha}", f"--out={tmp_path / 'out'}"
  for args, needle in [
    ([p, out, "--kv_heads=2"], "--kv_heads applies only with --variant"),
    ([p, out, "--calibration=/nope.npz"], "--calibration applies only with --variant"),
    ([p, out, "--group_sizes=2,2"], "--group_sizes applies only with --variant"),
    (
      [p, out, "--variant=gqa", "--kv_heads=2", f"--calibration={tmp_path / 'stats.npz'}"],
      "--calibration applies to the calibrated variants (aligned, mla, search, svd), "
      "not --variant=gqa",
    ),
    ([p, out, "--variant=svd", "--kv_heads=2", "--calibration=/nope.npz"], "no such file"),
    ([p, out, "--variant=gqa", "--kv_heads=2", "--group_encoder"], "this model has no encoder"),
    ([p, f"--out={mine}", "--overwrite"], "holds no wgqa_config.json: --overwrite replaces"),
    ([p, f"--out={tmp_path / 'mha_link'}", "--overwrite"], "would overwrite the input"),
  ]:
    with pytest.raises(errors.UserError, match=re.escape(needle)):
      convert.main(args)
    assert not (tmp_path / "out").exists(), args
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before, args
