"""Tiny random HF Llama / Mistral models and their logits, for the tests of every module that
meets the decoder-only family (models, hf, decoding, convert, train)."""

import numpy as np
import torch

from wgqa_jax.models import llama

SPEC = dict(
  vocab_size=97,
  hidden_size=40,
  intermediate_size=56,
  num_hidden_layers=2,
  num_attention_heads=4,
  head_dim=12,
  rope_theta=500.0,
  rms_norm_eps=1e-5,
  max_position_embeddings=64,
  tie_word_embeddings=False,
)


def hf_model(model_type="llama", kv_heads=4, tied=False, seed=0, **changes):
  from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

  torch.manual_seed(seed)
  spec = {**SPEC, "num_key_value_heads": kv_heads, "tie_word_embeddings": tied, **changes}
  if model_type == "mistral":
    model = MistralForCausalLM(MistralConfig(**spec, sliding_window=None))
  else:
    model = LlamaForCausalLM(LlamaConfig(**spec))
  with torch.no_grad():  # non-trivial norms, so the tests see them
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
  return model.eval()


def save(model, path):
  model.save_pretrained(str(path), safe_serialization=True)
  return str(path)


def batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 97, (3, 11)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0  # right padding
  mask[2, :4] = 0  # left padding
  return ids, mask


def hf_logits(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def ours(params, cfg, ids, mask):
  return np.asarray(
    llama.Llama(cfg).apply({"params": params}, ids.astype(np.int32), mask.astype(np.int32))
  )


def assert_close_where_valid(got, want, mask):
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-5, rtol=1e-5)
