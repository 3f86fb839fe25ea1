"""The grouped attention module (wgqa_jax.models.attention) against textbook attention in numpy,
where
query head h reads KV head h // (H / G): every G, WGQA weights, broadcast padding biases."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from references import ref_weighted_sum

from wgqa_jax.grouping.variants import Grouping
from wgqa_jax.models import t5
from wgqa_jax.models.t5.config import T5Config


def ref_attention(xq, xkv, q, k, v, o, bias):
  """Textbook MHA in numpy where query head h reads KV head h // (H / G) (no T5 scaling)."""
  h, g = q.shape[1], k.shape[1]
  out = 0.0
  for head in range(h):
    kv = head // (h // g)
    qh, kh, vh = xq @ q[:, head], xkv @ k[:, kv], xkv @ v[:, kv]  # (b, t|s, dk)
    logits = np.einsum("btk,bsk->bts", qh, kh) + bias[:, head if bias.shape[1] > 1 else 0]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = out + np.einsum("bts,bsk->btk", p, vh) @ o[head]
  return out


@pytest.mark.parametrize("g,wgqa", [(6, "none"), (2, "none"), (1, "none"), (3, "row"), (2, "col")])
def test_attention_module_matches_numpy_reference(g, wgqa):
  cfg = T5Config(
    d_model=16,
    d_kv=4,
    num_heads=6,
    dropout_rate=0.0,
    grouping=Grouping(kv_heads=g, weights=wgqa, weights_init="normal"),
  )
  rng = np.random.RandomState(2)
  xq, xkv = rng.randn(2, 5, 16).astype(np.float32), rng.randn(2, 7, 16).astype(np.float32)
  bias = rng.randn(1, 6, 5, 7).astype(np.float32)
  attn = t5.model.attention(cfg, ("decoder", "layers_0", "self_attention"))
  params = nn.unbox(attn.init(jax.random.PRNGKey(0), xq, xkv, bias)["params"])
  params = jax.tree.map(np.asarray, params)
  got = np.asarray(attn.apply({"params": params}, xq, xkv, bias))
  k, v = params["k"], params["v"]
  if wgqa != "none":
    k, v = ref_weighted_sum(k, params["wk"], g), ref_weighted_sum(v, params["wv"], g)
  want = ref_attention(xq, xkv, params["q"], k, v, params["o"], bias)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # A padding-style bias (one row for all heads) broadcasts over heads.
  mask_bias = np.where(rng.rand(2, 1, 1, 7) > 0.3, 0.0, -1e9).astype(np.float32)
  got = np.asarray(attn.apply({"params": params}, xq, xkv, mask_bias))
  np.testing.assert_allclose(
    got, ref_attention(xq, xkv, params["q"], k, v, params["o"], mask_bias), rtol=1e-4, atol=1e-5
  )
