"""The Llama-architecture family (wgqa_jax.models.llama) against HF PyTorch: logits of
LlamaForCausalLM and MistralForCausalLM (no sliding window) on tiny random models with odd shapes
(head_dim * H != hidden) and padded batches, and the configs it refuses."""

import pytest
from hf_llama import SPEC, assert_close_where_valid, batch, hf_logits, hf_model, ours, save

from wgqa_jax.store import hf


@pytest.mark.parametrize(
  "model_type,kv_heads,tied",
  [("llama", 4, False), ("llama", 2, False), ("llama", 1, True), ("mistral", 4, False)],
)
def test_logits_equal_hf(tmp_path, model_type, kv_heads, tied):
  model = hf_model(model_type, kv_heads, tied)
  params, cfg = hf.from_hf(save(model, tmp_path / "hf"))
  assert cfg.kv_heads == kv_heads and cfg.model_type == model_type
  assert params["layers_0"]["attention"]["k"].shape == (40, kv_heads, 12)  # G heads, as saved
  ids, mask = batch()
  assert_close_where_valid(ours(params, cfg, ids, mask), hf_logits(model, ids, mask), mask)


def test_unsupported_configs_are_refused():
  from wgqa_jax.models.llama.config import LlamaConfig

  base = {**SPEC, "num_key_value_heads": 4, "model_type": "llama"}
  with pytest.raises(ValueError, match="sliding window"):
    LlamaConfig.from_hf({**base, "model_type": "mistral", "sliding_window": 4096})
  with pytest.raises(ValueError, match="rope scaling"):
    LlamaConfig.from_hf({**base, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
  with pytest.raises(ValueError, match="biases"):
    LlamaConfig.from_hf({**base, "attention_bias": True})
