"""MLA models exported as DeepSeek-V3 (wgqa_jax.models.llama.deepseek): transformers'
DeepseekV3ForCausalLM loads the directory and computes our logits, per-layer ranks included;
what the form cannot hold is refused in one line."""

import jax
import numpy as np
import pytest
import torch

from wgqa_jax import models
from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping import variants
from wgqa_jax.grouping.variants import Grouping
from wgqa_jax.store import hf

RANKS = (("layers_0/attention", 12), ("layers_1/attention", 40))


def mla_model(module_ranks=RANKS, seed=0, **changes):
  grouping = Grouping(latent_rank=24, module_latent_rank=module_ranks)
  cfg = models.preset("llama-tiny", grouping=grouping, **changes)
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(seed)))
  rng = np.random.default_rng(seed)
  # norms away from 1 and logits of a trained model's size, so that nothing hides
  params = jax.tree_util.tree_map_with_path(
    lambda path, x: (
      rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
      if "norm" in str(path[0])
      else np.asarray(x) * 3
    ),
    params,
  )
  return params, cfg


def our_logits(params, cfg, ids):
  from wgqa_jax.models.llama import Llama

  return np.asarray(Llama(cfg).apply({"params": params}, ids))


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_deepseek_v3_computes_our_logits(tmp_path, tied):
  from transformers import DeepseekV3ForCausalLM

  params, cfg = mla_model(tie_word_embeddings=tied)
  hf.save_hf(params, cfg, str(tmp_path), form="deepseek")
  # float64: the reference's own float32 rounding reached 1.5e-4 here (ours: 3e-5 from it)
  model = DeepseekV3ForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float64).eval()
  assert model.config.kv_lora_rank == 41  # the largest rank + the constant channel
  ids = np.random.default_rng(1).integers(3, cfg.vocab_size, (2, 11))
  with torch.no_grad():
    theirs = model(torch.tensor(ids)).logits.numpy()
  ours = our_logits(params, cfg, ids)
  assert np.abs(ours).max() > 1.0
  np.testing.assert_allclose(theirs, ours, atol=2e-5 * np.abs(ours).max(), rtol=1e-4)
  # the cache transformers keeps: the latent (padded rank + 1) and one rotary key per layer
  with torch.no_grad():
    cache = model(torch.tensor(ids), use_cache=True).past_key_values
  assert tuple(cache.layers[0].keys.shape[-1:]) == (41,)


def test_a_converted_model_exports_too(tmp_path):
  """MHA -> mla (calibrated on random inputs) -> DeepSeek-V3: the same logits."""
  from transformers import DeepseekV3ForCausalLM

  cfg = models.preset("llama-tiny")
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(2)))

  class Stats:
    def gram(self, path):
      a = np.random.default_rng(len(path[0])).standard_normal((cfg.width, cfg.width))
      return a @ a.T

  new, new_cfg = variants.from_mha(params, cfg, "mla", 2, calibration=Stats())
  assert new_cfg.grouping.latent_rank == 2 * 2 * 16 - 16
  hf.save_hf(new, new_cfg, str(tmp_path), form="deepseek")
  model = DeepseekV3ForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float64).eval()
  ids = np.random.default_rng(3).integers(3, cfg.vocab_size, (2, 9))
  with torch.no_grad():
    theirs = model(torch.tensor(ids)).logits.numpy()
  ours = our_logits(new, new_cfg, ids)
  np.testing.assert_allclose(theirs, ours, atol=2e-5 * np.abs(ours).max(), rtol=1e-4)
  # greedy decoding: transformers over its latent cache, ours over ours
  from wgqa_jax.decoding import GenerationConfig, generate

  with torch.no_grad():
    hf_tokens = model.generate(torch.tensor(ids), max_new_tokens=8, do_sample=False)
  got = generate(
    new,
    new_cfg,
    ids.astype(np.int32),
    GenerationConfig(max_new_tokens=8),
    attention_mask=np.ones(ids.shape, np.int32),
  )
  np.testing.assert_array_equal(np.asarray(got), hf_tokens[:, ids.shape[1] :].numpy())


def test_what_the_form_cannot_hold_is_refused_in_one_line(tmp_path):
  params, cfg = mla_model()
  with pytest.raises(UserError, match="--export=deepseek"):
    hf.save_hf(params, cfg, str(tmp_path / "a"), form="hf")
  two = cfg.replace(grouping=cfg.grouping.replace(rope_heads=2))
  mha = models.preset("llama-tiny")
  for name, c, message in (("b", two, "one rotary key head"), ("c", mha, "writes MLA models")):
    p = models.family_of(c).init_params(c, jax.random.PRNGKey(0))
    with pytest.raises(UserError, match=message):
      hf.save_hf(p, c, str(tmp_path / name), form="deepseek")
  with pytest.raises(UserError, match="llama.cpp"):
    models.family_of(cfg).serving_form(cfg)
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
