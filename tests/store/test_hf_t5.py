"""Hugging Face T5 checkpoints <-> our params (wgqa_jax.store.hf): exact round trips, grouped
exports
HF loads with our logits, pytorch_model.bin, and clear errors. (Llama: test_hf_llama.py.)"""

import json
import os

import numpy as np
import pytest
from conftest import V10, batch, hf_logits, make_hf_model

from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping import variants
from wgqa_jax.models import t5
from wgqa_jax.models.t5.config import T5Config
from wgqa_jax.store import hf as hf_io


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
  params, cfg = variants.from_mha(
    *hf_io.from_hf(path), variant, 2, group_encoder=(variant == "wgqa")
  )
  if variant == "wgqa":  # uneven, as after uptraining
    for s, l, m in variants.grouped_paths(cfg):
      params[s][l][m]["wv"] = params[s][l][m]["wv"] * np.linspace(0.2, 1.5, cfg.num_heads)
  hf_io.save_hf(params, cfg, str(tmp_path))
  back = _load_hf(str(tmp_path))
  ids, mask, dec = batch(cfg.vocab_size)
  ours = np.asarray(t5.T5(cfg).apply({"params": params}, ids, dec, mask))
  np.testing.assert_allclose(hf_logits(back, ids, dec, mask), ours, rtol=1e-5, atol=1e-5)


def test_pytorch_bin_checkpoint(tmp_path):
  import torch

  hf = make_hf_model(V10)
  hf.save_pretrained(str(tmp_path))
  os.remove(tmp_path / "model.safetensors")
  torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
  params, cfg = hf_io.from_hf(str(tmp_path))
  ids, mask, dec = batch(cfg.vocab_size)
  np.testing.assert_allclose(
    t5.T5(cfg).apply({"params": params}, ids, dec, mask),
    hf_logits(hf, ids, dec, mask),
    rtol=1e-5,
    atol=1e-5,
  )


# ------------------------------------------------------------------------------ errors ----
def test_error_missing_directory():
  with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
    hf_io.Reader("./does/not/exist")


def test_error_directory_without_weights(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    hf_io.Reader(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(T5Config().to_hf()))
  with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
    hf_io.Reader(str(tmp_path))


def test_error_unreachable_hub_id(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(FileNotFoundError, match="could not be fetched"):
    hf_io.Reader("t5-small-that-is-not-cached")


def test_error_missing_key_and_shape_mismatch():
  hf = make_hf_model(V10)
  cfg = hf_io.config_from_hf(hf.config.to_dict(), {})
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  broken = dict(sd)
  del broken["decoder.block.1.layer.1.EncDecAttention.v.weight"]
  with pytest.raises(UserError, match="decoder.block.1.layer.1.EncDecAttention.v.weight"):
    hf_io.hf_to_params(broken, cfg)
  with pytest.raises(ValueError, match="config and weights disagree"):
    hf_io.hf_to_params(sd, cfg.replace(d_ff=64))
