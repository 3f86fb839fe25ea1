"""Hugging Face checkpoints <-> our params (wgqa_jax.store.hf) for the decoder-only family: MHA ->
GQA conversion against a torch reference that mean-pools HF's k_proj / v_proj rows per group, and
export as a *native* GQA checkpoint (num_key_value_heads=G) that transformers loads with G K/V
heads. (T5's round trips: test_hf_t5.py.)"""

import pytest
from hf_llama import assert_close_where_valid, batch, hf_logits, hf_model, ours, save

from wgqa_jax.grouping import variants
from wgqa_jax.store import hf


def pooled_reference(model, groups):
  """A HF model with `groups` KV heads whose k_proj / v_proj rows are the mean of each group's
  contiguous heads: what GQA conversion means, written in torch."""
  from transformers import LlamaForCausalLM

  cfg = model.config.to_dict()
  h, dk = cfg["num_attention_heads"], cfg["head_dim"]
  g_old = cfg["num_key_value_heads"]
  ref = LlamaForCausalLM(type(model.config)(**{**cfg, "num_key_value_heads": groups})).eval()
  sd = model.state_dict()
  for k, v in list(sd.items()):
    if k.endswith(("k_proj.weight", "v_proj.weight")):
      heads = v.reshape(g_old, dk, -1).repeat_interleave(h // g_old, 0)  # as H heads
      sd[k] = heads.reshape(groups, h // groups, dk, -1).mean(1).reshape(groups * dk, -1)
  ref.load_state_dict(sd)
  return ref


@pytest.mark.parametrize("source_kv,variant,groups", [(4, "gqa", 2), (4, "mqa", 1), (2, "mqa", 1)])
def test_grouping_equals_mean_pooled_hf_and_exports_natively(tmp_path, source_kv, variant, groups):
  from transformers import AutoModelForCausalLM

  model = hf_model("llama", source_kv)
  params, cfg = hf.from_hf(save(model, tmp_path / "hf"))
  if not variants.is_mha(cfg):  # already GQA: re-grouped to fewer heads through MHA
    params, cfg = variants.expand_to_mha(params, cfg)
  params, cfg = variants.from_mha(params, cfg, variant, groups)
  ids, mask = batch()
  got = ours(params, cfg, ids, mask)
  assert_close_where_valid(got, hf_logits(pooled_reference(model, groups), ids, mask), mask)

  hf.save_hf(params, cfg, str(tmp_path / "export"))
  exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
  assert exported.config.num_key_value_heads == groups
  assert tuple(exported.model.layers[0].self_attn.k_proj.weight.shape) == (groups * 12, 40)
  assert_close_where_valid(got, hf_logits(exported, ids, mask), mask)


def test_wgqa_folds_into_a_native_gqa_export(tmp_path):
  from transformers import AutoModelForCausalLM

  params, cfg = hf.from_hf(save(hf_model("llama", 4), tmp_path / "hf"))
  params, cfg = variants.from_mha(params, cfg, "randwgqa", 2, seed=3)  # N(0,1) weights: not GQA
  assert params["layers_1"]["attention"]["k"].shape == (40, 4, 12)  # all H kernels kept
  ids, mask = batch()
  got = ours(params, cfg, ids, mask)
  hf.save_hf(params, cfg, str(tmp_path / "export"))
  exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
  assert exported.config.num_key_value_heads == 2
  assert_close_where_valid(got, hf_logits(exported, ids, mask), mask)
