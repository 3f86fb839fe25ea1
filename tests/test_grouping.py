"""Grouped attention against plain-numpy references: pooling, WGQA sums, the attention itself."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import V10, batch, hf_logits, make_hf_model
from wgqa_jax import grouping, params_io, variants
from wgqa_jax import hf as hf_io
from wgqa_jax.models import t5
from wgqa_jax.models.t5_config import T5Config
from wgqa_jax.variants import Grouping


# ---------------------------------------------------------------- numpy references (loops) ----
def ref_mean_pool(kernel, g):
  d, h, dk = kernel.shape
  size = h // g
  out = np.zeros((d, g, dk), np.float64)
  for head in range(h):
    out[:, head // size] += kernel[:, head] / size
  return out


def ref_weighted_sum(kernel, w, g):
  d, h, dk = kernel.shape
  size = h // g
  out = np.zeros((d, g, dk), np.float64)
  for head in range(h):
    out[:, head // size] += kernel[:, head] * w[head]  # w[head] is a scalar or a (dk,) row
  return out


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


# ---------------------------------------------------------------------------------- tests ----
@pytest.mark.parametrize("g", [1, 2, 3, 6])
def test_mean_pool_and_expand_match_reference(g):
  kernel = np.random.RandomState(0).randn(5, 6, 4).astype(np.float32)
  np.testing.assert_allclose(grouping.mean_pool(kernel, g), ref_mean_pool(kernel, g), atol=1e-6)
  expanded = grouping.expand(grouping.mean_pool(kernel, g), 6)
  for head in range(6):
    np.testing.assert_array_equal(expanded[:, head], grouping.mean_pool(kernel, g)[:, head // (6 // g)])


@pytest.mark.parametrize("shape", [(6,), (6, 4)])
def test_weighted_sum_matches_reference(shape):
  rng = np.random.RandomState(1)
  kernel, w = rng.randn(5, 6, 4).astype(np.float32), rng.randn(*shape).astype(np.float32)
  np.testing.assert_allclose(grouping.weighted_sum(kernel, w, 2), ref_weighted_sum(kernel, w, 2),
                             atol=1e-5)


def test_grouping_rejects_indivisible_heads():
  with pytest.raises(ValueError, match="not divisible"):
    grouping.mean_pool(np.zeros((4, 6, 2)), 4)
  with pytest.raises(ValueError, match="not divisible by kv_heads=4"):
    T5Config(num_heads=6, grouping=Grouping(kv_heads=4))


@pytest.mark.parametrize("g,wgqa", [(6, "none"), (2, "none"), (1, "none"), (3, "row"), (2, "col")])
def test_attention_module_matches_numpy_reference(g, wgqa):
  cfg = T5Config(d_model=16, d_kv=4, num_heads=6, dropout_rate=0.0,
                 grouping=Grouping(kv_heads=g, weights=wgqa, weights_init="normal"))
  rng = np.random.RandomState(2)
  xq, xkv = rng.randn(2, 5, 16).astype(np.float32), rng.randn(2, 7, 16).astype(np.float32)
  bias = rng.randn(1, 6, 5, 7).astype(np.float32)
  attn = t5.attention(cfg, "decoder")
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
  np.testing.assert_allclose(got, ref_attention(xq, xkv, params["q"], k, v, params["o"],
                                                mask_bias), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def v10():
  hf = make_hf_model(V10)
  cfg = hf_io.config_from_hf(hf.config.to_dict(), {})
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  return hf, hf_io.hf_to_params(sd, cfg), cfg


def _logits(params, cfg, seed=0):
  ids, mask, dec = batch(cfg.vocab_size, seed=seed)
  return np.asarray(t5.T5(cfg).apply({"params": params}, ids, dec, mask))


def test_kv_heads_equal_heads_is_exactly_mha(v10):
  _, params, cfg = v10
  gparams, gcfg = variants.from_mha(params, cfg, "gqa", cfg.num_heads)
  np.testing.assert_array_equal(_logits(gparams, gcfg), _logits(params, cfg))


@pytest.mark.parametrize("variant,g", [("gqa", 2), ("mqa", None)])
def test_gqa_mqa_conversion_equals_hf_with_numpy_pooled_heads(v10, variant, g):
  """Our G-head model == HF T5 whose decoder K/V heads were mean-pooled by numpy and repeated."""
  import torch
  hf, params, cfg = v10
  gparams, gcfg = variants.from_mha(params, cfg, variant, g)
  g = gcfg.kv_heads
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  ref = make_hf_model(V10)
  ref.load_state_dict(hf.state_dict())
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if name.startswith("decoder.") and name.endswith((".k.weight", ".v.weight")):
        w = p.numpy().T.reshape(d, h, dk)               # HF [out, in] -> (d, H, dk)
        pooled = ref_mean_pool(w, g)
        rep = np.stack([pooled[:, head // (h // g)] for head in range(h)], axis=1)
        p.copy_(torch.tensor(rep.reshape(d, h * dk).T.astype(np.float32)))
  ids, mask, dec = batch(cfg.vocab_size)
  got = np.asarray(t5.T5(gcfg).apply({"params": gparams}, ids, dec, mask))
  np.testing.assert_allclose(got, hf_logits(ref, ids, dec, mask), rtol=1e-5, atol=1e-5)
  # The grouped model really holds G heads: K/V kernels are (d, G, dk).
  assert gparams["decoder"]["layers_0"]["self_attention"]["k"].shape == (d, g, dk)
  assert gparams["encoder"]["layers_0"]["attention"]["k"].shape == (d, h, dk)


@pytest.mark.parametrize("g", [1, 2])
def test_wgqa_with_weights_one_over_group_size_equals_gqa(v10, g):
  _, params, cfg = v10
  wparams, wcfg = variants.from_mha(params, cfg, "wgqa", g)
  for stack, layer, module in variants.grouped_paths(wcfg):
    for name in ("wk", "wv"):
      wparams[stack][layer][module][name] = np.full((cfg.num_heads,), g / cfg.num_heads,
                                                    np.float32)
  gparams, gcfg = variants.from_mha(params, cfg, "gqa", g)
  np.testing.assert_allclose(_logits(wparams, wcfg), _logits(gparams, gcfg), rtol=1e-5, atol=1e-5)


def test_wgqa_init_half_with_two_heads_per_group_starts_at_gqa(v10):
  _, params, cfg = v10  # 4 heads, G = 2: 0.5 * (K_a + K_b) is the mean
  wparams, wcfg = variants.from_mha(params, cfg, "wgqa", 2)
  gparams, gcfg = variants.from_mha(params, cfg, "gqa", 2)
  np.testing.assert_allclose(_logits(wparams, wcfg), _logits(gparams, gcfg), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["wgqa", "randwgqa", "colwgqa", "colrandwgqa"])
def test_folded_wgqa_equals_unfolded(v10, variant):
  _, params, cfg = v10
  wparams, wcfg = variants.from_mha(params, cfg, variant, 2, group_encoder=True, seed=3)
  rng = np.random.RandomState(0)
  for stack, layer, module in variants.grouped_paths(wcfg):  # as if uptrained: uneven weights
    p = wparams[stack][layer][module]
    p["wk"] = p["wk"] + rng.randn(*p["wk"].shape).astype(np.float32) * 0.3
  fparams, fcfg = variants.fold(wparams, wcfg)
  assert fcfg.grouping.weights == "none" and fcfg.kv_heads == 2
  assert "wk" not in fparams["decoder"]["layers_0"]["cross_attention"]
  assert fparams["encoder"]["layers_0"]["attention"]["k"].shape == (cfg.d_model, 2, cfg.d_kv)
  params_io.check_params(fparams, fcfg)
  np.testing.assert_allclose(_logits(fparams, fcfg), _logits(wparams, wcfg), rtol=1e-5,
                             atol=1e-5)


def test_randwgqa_init_is_standard_normal_and_row_col_shapes(v10):
  _, params, cfg = v10
  wparams, wcfg = variants.from_mha(params, cfg, "randwgqa", 2)
  ws = np.concatenate([wparams[s][l][m][n] for s, l, m in variants.grouped_paths(wcfg)
                       for n in ("wk", "wv")])
  assert ws.shape == (2 * 2 * cfg.num_decoder_layers * cfg.num_heads,)
  assert abs(ws.mean()) < 0.6 and 0.5 < ws.std() < 1.6  # 48 draws from N(0, 1)
  cparams, _ = variants.from_mha(params, cfg, "colwgqa", 2)
  w = cparams["decoder"]["layers_1"]["self_attention"]["wv"]
  assert w.shape == (cfg.num_heads, cfg.d_kv) and np.all(w == 0.5)


def test_flax_init_creates_the_same_tree_as_conversion(v10):
  _, params, cfg = v10
  for variant in ("gqa", "wgqa", "colrandwgqa"):
    gparams, gcfg = variants.from_mha(params, cfg, variant, 2)
    fresh = t5.init_params(gcfg, jax.random.PRNGKey(0))
    assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, gparams)
    if gcfg.grouping.weights != "none" and gcfg.grouping.weights_init == "constant":
      assert np.all(np.asarray(fresh["decoder"]["layers_0"]["self_attention"]["wk"]) == 0.5)


def test_param_axes_name_kv_heads():
  cfg = T5Config(**{**dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_heads=4,
                           num_encoder_layers=1, num_decoder_layers=1)},
                 grouping=Grouping(kv_heads=2))
  axes = t5.param_axes(cfg)
  assert tuple(axes["decoder"]["layers_0"]["self_attention"]["k"]) == ("embed", "kv_heads", "kv")
  assert tuple(axes["encoder"]["layers_0"]["attention"]["k"]) == ("embed", "kv_heads", "kv")
  assert tuple(axes["shared"]["embedding"]) == ("vocab", "embed")
  assert tuple(axes["decoder"]["layers_0"]["mlp"]["wi"]) == ("embed", "mlp")
  wcfg = cfg.replace(grouping=cfg.grouping.replace(weights="row"))
  axes = t5.param_axes(wcfg)
  assert tuple(axes["decoder"]["layers_0"]["cross_attention"]["k"]) == ("embed", "heads", "kv")
  assert tuple(axes["decoder"]["layers_0"]["cross_attention"]["wk"]) == ("heads",)


def test_dense_and_its_cpu_weight_gradient_match_numpy():
  """ops.dense (one 2-D matmul; on CPU a custom VJP that materialises x^T) against numpy."""
  from wgqa_jax import ops
  rng = np.random.default_rng(0)
  for x_shape, w_shape, n_in in (((2, 3, 8), (8, 4, 5), 1), ((2, 3, 4, 5), (4, 5, 8), 2)):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    dy = rng.standard_normal(x_shape[:-n_in] + w_shape[n_in:]).astype(np.float32)
    axes = (list(range(x.ndim - n_in, x.ndim)), list(range(n_in)))
    np.testing.assert_allclose(ops.dense(x, w, n_in), np.tensordot(x, w, axes), rtol=1e-5,
                               atol=1e-5)
    gx, gw = jax.grad(lambda a, b: jnp.sum(ops.dense(a, b, n_in) * dy), argnums=(0, 1))(x, w)
    out_axes = list(range(x.ndim - n_in, dy.ndim))
    np.testing.assert_allclose(gx, np.tensordot(dy, w, (out_axes, list(range(n_in, w.ndim)))),
                               rtol=1e-4, atol=1e-4)
    lead = list(range(x.ndim - n_in))
    np.testing.assert_allclose(gw, np.tensordot(x, dy, (lead, lead)), rtol=1e-4, atol=1e-4)
