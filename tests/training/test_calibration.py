"""Calibration statistics (wgqa_jax.training.calibration): the first layer's grams against numpy
from the embeddings, padding left out, the file round trip and its refusals; converting with
them."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgqa_jax import models
from wgqa_jax.grouping import variants
from wgqa_jax.training import calibration


def rms_norm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def random_model(arch):
  cfg = models.preset(arch)
  return cfg, jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(3)))


def llama_batch(cfg):
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (2, 10)).astype(np.int32)
  seg = np.ones((2, 10), np.int32)
  seg[0, 4:] = 2  # two documents in row 0
  seg[1, 7:] = 0  # padding at the end of row 1
  tokens[1, 7:] = 0
  pos = np.concatenate([np.arange(4), np.arange(6)])[None].repeat(2, 0).astype(np.int32)
  pos[1] = np.arange(10)
  return {"tokens": tokens, "segment_ids": seg, "positions": pos}


def t5_batch(cfg):
  rng = np.random.default_rng(1)
  inputs = rng.integers(2, cfg.vocab_size, (2, 8)).astype(np.int32)
  inputs[0, 5:] = cfg.pad_token_id
  targets = rng.integers(2, cfg.vocab_size, (2, 4)).astype(np.int32)
  return {"inputs": inputs, "targets": targets}


def test_llama_first_layer_gram_equals_numpy_and_skips_padding():
  cfg, params = random_model("llama-tiny")
  batch = llama_batch(cfg)
  stats = calibration.collect(params, cfg, iter([batch, batch]), 2, desc=None)
  x = np.asarray(params["embed"]["embedding"], np.float64)[batch["tokens"]]
  x = rms_norm(x, np.asarray(params["layers_0"]["input_norm"]["scale"]), cfg.rms_norm_eps)
  real = batch["segment_ids"] > 0
  want = 2 * np.einsum("nd,ne->de", x[real], x[real])
  np.testing.assert_allclose(
    stats.gram(("layers_0", "attention")), want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
  )
  assert stats.tokens[("layers_0", "attention")] == 2 * real.sum() == 2 * 17
  assert stats.batches == 2 and len(stats.grams) == cfg.num_layers


def test_t5_grams_cover_every_module_and_cross_attention_reads_real_inputs_only():
  cfg, params = random_model("tiny")
  batch = t5_batch(cfg)
  stats = calibration.collect(params, cfg, iter([batch]), 1, desc=None)
  assert set(stats.grams) == {p for p, _ in cfg.attention_modules()}
  x = np.asarray(params["shared"]["embedding"], np.float64)[batch["inputs"]]
  x = rms_norm(
    x, np.asarray(params["encoder"]["layers_0"]["attention_norm"]["scale"]), cfg.layer_norm_epsilon
  )
  real = batch["inputs"] != cfg.pad_token_id
  want = np.einsum("nd,ne->de", x[real], x[real])
  np.testing.assert_allclose(
    stats.gram(("encoder", "layers_0", "attention")),
    want,
    rtol=1e-4,
    atol=1e-4 * np.abs(want).max(),
  )
  assert stats.tokens[("decoder", "layers_1", "cross_attention")] == real.sum() == 13


def test_file_round_trip_and_refusals(tmp_path):
  cfg, params = random_model("llama-tiny")
  stats = calibration.collect(params, cfg, iter([llama_batch(cfg)]), 1, desc=None)
  path = str(tmp_path / calibration.FILE)
  calibration.save(path, stats)
  back = calibration.load(path, cfg)
  assert back.batches == 1 and back.tokens == stats.tokens
  for p in stats.grams:
    np.testing.assert_array_equal(back.gram(p), stats.gram(p))
  with pytest.raises(
    ValueError,
    match="no statistics of attention module decoder/layers_0/"
    "self_attention: it was calibrated on another model",
  ):
    calibration.load(path, models.preset("tiny"))
  with pytest.raises(
    ValueError, match="shape \\(64, 64\\) for layers_0/attention, whose inputs are 128 wide"
  ):
    calibration.load(path, models.preset("llama-tiny-8head"))
  with open(path, "wb") as f:
    f.write(b"not an npz")
  with pytest.raises(ValueError, match="is not a calibration statistics file"):
    calibration.load(path)
  with pytest.raises(ValueError, match="needs 3 batches; the data gave 1"):
    calibration.collect(params, cfg, iter([llama_batch(cfg)]), 3, desc=None)


@pytest.mark.parametrize("arch", ["tiny", "llama-tiny"])
@pytest.mark.parametrize("method", ["aligned", "svd", "search"])
def test_calibrated_conversion_with_one_head_per_group_keeps_the_logits(arch, method):
  """With G = H every group is one head: aligned is the identity and svd a rotation of each
  head absorbed into q and o, so the converted model computes the MHA model's logits."""
  cfg, params = random_model(arch)
  batch = llama_batch(cfg) if (cfg.family == 'llama') else t5_batch(cfg)
  stats = calibration.collect(params, cfg, iter([batch]), 1, desc=None)
  new, new_cfg = variants.from_mha(params, cfg, method, cfg.num_heads, calibration=stats)
  assert new_cfg.grouping.kv_heads == cfg.num_heads
  from wgqa_jax.training import objectives

  logits = lambda p, c: np.asarray(objectives.forward(p, batch, c)[0])
  np.testing.assert_allclose(logits(new, new_cfg), logits(params, cfg), atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="needs calibration statistics"):
    variants.from_mha(params, cfg, method, 2)


def test_calibrated_merge_beats_mean_pooling_on_held_in_loss():
  """On the calibration batch itself, an SVD-merged random Llama (G = 1) stays closer to the
  MHA model's next-token loss than mean-pooling: the merge uses what the heads compute."""
  from wgqa_jax.training import objectives

  cfg, params = random_model("llama-tiny")
  batch = llama_batch(cfg)
  stats = calibration.collect(params, cfg, iter([batch]), 1, desc=None)

  def drift(p, c):  # mean squared change of the logits
    return float(
      jnp.mean(
        (objectives.forward(p, batch, c)[0] - objectives.forward(params, batch, cfg)[0]) ** 2
      )
    )

  svd = drift(*variants.from_mha(params, cfg, "svd", 1, calibration=stats))
  mean = drift(*variants.from_mha(params, cfg, "gqa", 1))
  assert svd < mean


@pytest.mark.parametrize("arch", ["tiny", "llama-tiny"])
def test_scanned_layers_give_the_same_statistics(arch):
  """A run with scanned layers calibrates them scanned (one layer's weights gathered at a
  time); the per-layer statistics equal the unrolled model's."""
  cfg, params = random_model(arch)
  batch = llama_batch(cfg) if (cfg.family == 'llama') else t5_batch(cfg)
  plain = calibration.collect(params, cfg, iter([batch]), 1, desc=None)
  scanned = calibration.collect(params, cfg.replace(scan_layers=True), iter([batch]), 1, desc=None)
  assert set(scanned.grams) == set(plain.grams) and scanned.tokens == plain.tokens
  for p in plain.grams:
    np.testing.assert_allclose(
      scanned.gram(p), plain.gram(p), rtol=1e-5, atol=1e-5 * np.abs(plain.gram(p)).max()
    )


def test_a_run_reuses_its_statistics_only_for_the_same_model_and_data(tmp_path, capsys):
  """WORKDIR/calibration.npz is read back by the run that wrote it; one left by a run of other
  data that stopped before its first checkpoint is computed afresh, not reused."""
  import importlib
  import os
  import shutil

  from wgqa_jax.training import trainer

  config = importlib.import_module("configs.llama_uptrain").get_config("tiny")
  config.grouping.update(variant="svd", kv_heads=2, calibration_batches=2)
  config.optim.update(num_train_steps=2, batch_size=8)
  config.data.update(max_input_length=24, max_target_length=8, train_examples=32)
  config.eval.update(examples=8, batch_size=8, every=0)
  work = tmp_path / "run"
  trainer.train(config, str(work))
  first = calibration.load(str(work / calibration.FILE))
  assert '"batches": 2' in first.source and first.batches == 2
  for name in os.listdir(work):  # as if it had stopped before its first checkpoint
    if name not in (calibration.FILE, "spm.model"):
      shutil.rmtree(work / name) if (work / name).is_dir() else os.remove(work / name)
  config.data.train_examples = 16  # other data
  capsys.readouterr()
  trainer.train(config, str(work))
  assert "computed for another model or data; computing it afresh" in capsys.readouterr().out
  again = calibration.load(str(work / calibration.FILE))
  assert again.source != first.source and '"train_examples": 16' in again.source
  arrays = dict(np.load(work / calibration.FILE))  # the run's own file, damaged: made again
  key = next(k for k in arrays if k.startswith("gram:"))
  arrays[key] = np.full_like(arrays[key], np.nan)
  np.savez(work / calibration.FILE, **arrays)
  trainer.train(config, str(work))
  assert "are not finite (NaN or inf)" in capsys.readouterr().out
  fixed = calibration.load(str(work / calibration.FILE))
  module = tuple(key[5:].split("/"))
  np.testing.assert_array_equal(fixed.grams[module], again.grams[module])


@pytest.mark.parametrize("damage", ["foreign", "truncated", "pickle", "nan", "inf", "no_tokens"])
def test_a_foreign_or_damaged_statistics_file_is_refused_and_nothing_is_written(tmp_path, damage):
  """What a user may hand convert --calibration: refused (a UserError: one line, exit 2), no
  params dir written; a pickle inside is never unpickled."""
  from wgqa_jax.core import errors
  from wgqa_jax.store import params_io
  from wgqa_jax.tools import convert

  cfg, params = random_model("llama-tiny")
  params_io.save(params, cfg, str(tmp_path / "mha"))
  stats = calibration.collect(params, cfg, iter([llama_batch(cfg)]), 1, desc=None)
  path = str(tmp_path / calibration.FILE)
  calibration.save(path, stats)
  module = "gram:" + "/".join(next(iter(stats.grams)))
  arrays = dict(np.load(path))
  ran = tmp_path / "ran"  # what the pickle would create
  if damage == "foreign":
    np.savez(path, weights=np.ones(3))
  elif damage == "truncated":
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
  elif damage == "pickle":  # an object array: loading it would run the pickle's code
    MARK[0] = str(ran)
    np.savez(path, **{**arrays, module: np.array([Exploit()], dtype=object)})
  elif damage in ("nan", "inf"):
    arrays[module] = arrays[module].copy()
    arrays[module][0, 1] = np.nan if damage == "nan" else np.inf
    np.savez(path, **arrays)
  else:
    np.savez(path, **{**arrays, "tokens:" + module[5:]: np.int64(0)})
  out = tmp_path / "svd"
  args = [f"--params={tmp_path / 'mha'}", "--variant=svd", "--kv_heads=2", f"--out={out}"]
  needle = {
    "foreign": "is not a calibration statistics file",
    "truncated": "is not a calibration statistics file",
    "pickle": "is not a calibration statistics file",
    "nan": "are not finite (NaN or inf)",
    "inf": "are not finite (NaN or inf)",
    "no_tokens": "count 0 tokens",
  }[damage]
  with pytest.raises(errors.UserError, match=re.escape(needle)):
    convert.main(args + [f"--calibration={path}"])
  assert not out.exists() and not ran.exists()


class Exploit:
  def __reduce__(self):
    return (open, (MARK[0], "w"))


MARK = [os.devnull]
