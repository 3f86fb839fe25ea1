"""The variants (wgqa_jax.grouping.variants): MHA -> GQA / MQA / WGQA against HF with numpy-pooled
heads, fold, init; and the variants from the literature, each against its defining property / a
numpy reference: SimGQA, AsymGQA (unequal static groups), KDGQA / DGQA (key-norm allocation), PGQA
(noise)."""

import copy

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import V10, batch, hf_logits, make_hf_model
from flax import traverse_util
from test_kv_merge import ref_mean_pool

from wgqa_jax.grouping import kv_merge, variants
from wgqa_jax.grouping.variants import Grouping
from wgqa_jax.models import t5
from wgqa_jax.models.t5.config import T5Config
from wgqa_jax.store import hf as hf_io, params_io


# ------------------------------------------- MHA -> each variant, against HF and numpy ----
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
        w = p.numpy().T.reshape(d, h, dk)  # HF [out, in] -> (d, H, dk)
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
      wparams[stack][layer][module][name] = np.full((cfg.num_heads,), g / cfg.num_heads, np.float32)
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
  params_io.check_shapes(
    {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(fparams).items()}, fcfg
  )
  np.testing.assert_allclose(_logits(fparams, fcfg), _logits(wparams, wcfg), rtol=1e-5, atol=1e-5)


def test_randwgqa_init_is_standard_normal_and_row_col_shapes(v10):
  _, params, cfg = v10
  wparams, wcfg = variants.from_mha(params, cfg, "randwgqa", 2)
  ws = np.concatenate(
    [wparams[s][l][m][n] for s, l, m in variants.grouped_paths(wcfg) for n in ("wk", "wv")]
  )
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


# ------------------------------------------------------- the variants from the literature ----


def ref_allocate(norms, h):
  """Plain-python KDGQA allocation: one query each, the rest by largest remainder."""
  g = len(norms)
  share = [(h - g) * n / sum(norms) for n in norms]
  base = [int(np.floor(x)) for x in share]
  left = (h - g) - sum(base)
  order = sorted(range(g), key=lambda i: (-(share[i] - base[i]), i))
  return [1 + base[i] + (1 if i in order[:left] else 0) for i in range(g)]


def ref_gathered_attention(xq, xkv, q, k, v, o, bias, index):
  """Query head h attends with KV head index[h] (numpy, no T5 scaling)."""
  out = 0.0
  for head in range(q.shape[1]):
    qh, kh, vh = xq @ q[:, head], xkv @ k[:, index[head]], xkv @ v[:, index[head]]
    logits = np.einsum("tk,sk->ts", qh, kh) + bias[head]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    out = out + (p / p.sum(-1, keepdims=True)) @ vh @ o[head]
  return out


def module(cfg):
  attn = t5.model.attention(cfg, ("decoder", "layers_0", "self_attention"))
  rng = np.random.RandomState(0)
  xq, xkv = rng.randn(2, 5, 16).astype(np.float32), rng.randn(2, 7, 16).astype(np.float32)
  bias = rng.randn(1, cfg.num_heads, 5, 7).astype(np.float32)
  params = jax.tree.map(
    np.array, nn.unbox(attn.init(jax.random.PRNGKey(1), xq, xkv, bias)["params"])
  )
  return attn, params, xq, xkv, bias


def test_allocation_matches_reference():
  rng = np.random.RandomState(0)
  for _ in range(50):
    g = rng.randint(1, 6)
    h = g * rng.randint(1, 4) + rng.randint(0, 3)
    norms = rng.rand(g) + 0.01
    got = np.asarray(kv_merge.allocate_queries(norms[None], h))[0]
    assert got.tolist() == ref_allocate(norms.tolist(), h)
    idx = np.asarray(kv_merge.kv_index_from_counts(got[None], h))[0]
    assert idx.tolist() == [i for i, n in enumerate(got) for _ in range(n)]


def test_asymmetric_groups_attention_matches_reference():
  cfg = T5Config(
    d_model=16,
    d_kv=4,
    num_heads=6,
    dropout_rate=0.0,
    grouping=Grouping(kv_heads=3, group_sizes=[3, 1, 2]),
  )
  attn, p, xq, xkv, bias = module(cfg)
  assert p["k"].shape == (16, 3, 4)
  got = np.asarray(attn.apply({"params": p}, xq, xkv, bias))
  for b in range(2):
    want = ref_gathered_attention(
      xq[b], xkv[b], p["q"], p["k"], p["v"], p["o"], bias[0], [0, 0, 0, 1, 2, 2]
    )
    np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("allocation", ["key_norm", "kernel_norm"])
def test_key_norm_allocation_attention_matches_reference(allocation):
  cfg = T5Config(
    d_model=16,
    d_kv=4,
    num_heads=6,
    dropout_rate=0.0,
    grouping=Grouping(kv_heads=2, allocation=allocation),
  )
  attn, p, xq, xkv, bias = module(cfg)
  p["k"][:, 1] *= 3.0  # make KV head 1 clearly the larger one
  got = np.asarray(attn.apply({"params": p}, xq, xkv, bias))
  for b in range(2):
    if allocation == "key_norm":  # KDGQA: this example's keys
      keys = np.einsum("sd,dgk->sgk", xkv[b], p["k"])
      norms = np.sqrt((keys**2).sum(axis=(0, 2)))
    else:  # DGQA: the kernels
      norms = np.sqrt((p["k"] ** 2).sum(axis=(0, 2)))
    counts = ref_allocate(norms.tolist(), 6)
    assert counts[1] > counts[0]
    index = [i for i, n in enumerate(counts) for _ in range(n)]
    want = ref_gathered_attention(xq[b], xkv[b], p["q"], p["k"], p["v"], p["o"], bias[0], index)
    np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


def test_equal_norms_allocate_like_gqa():
  cfg = T5Config(
    d_model=16,
    d_kv=4,
    num_heads=6,
    dropout_rate=0.0,
    grouping=Grouping(kv_heads=3, allocation="kernel_norm"),
  )
  attn, p, xq, xkv, bias = module(cfg)
  p["k"] = np.repeat(p["k"][:, :1], 3, axis=1)  # identical kernels -> equal norms -> 2 each
  got = attn.apply({"params": p}, xq, xkv, bias)
  self_attention = ("decoder", "layers_0", "self_attention")
  gqa = t5.model.attention(
    cfg.replace(grouping=cfg.grouping.replace(allocation="static")), self_attention
  )
  np.testing.assert_allclose(got, gqa.apply({"params": p}, xq, xkv, bias), rtol=1e-5, atol=1e-6)


def test_pgqa_noise_only_while_training():
  cfg = T5Config(
    d_model=16,
    d_kv=4,
    num_heads=6,
    dropout_rate=0.0,
    grouping=Grouping(kv_heads=2, attention_noise=0.5),
  )
  attn, p, xq, xkv, bias = module(cfg)
  plain = t5.model.attention(
    cfg.replace(grouping=cfg.grouping.replace(attention_noise=0.0)),
    ("decoder", "layers_0", "self_attention"),
  )
  np.testing.assert_array_equal(
    attn.apply({"params": p}, xq, xkv, bias), plain.apply({"params": p}, xq, xkv, bias)
  )
  run = lambda seed: np.asarray(
    attn.apply({"params": p}, xq, xkv, bias, False, rngs={"dropout": jax.random.PRNGKey(seed)})
  )
  np.testing.assert_array_equal(run(0), run(0))
  assert np.abs(run(0) - run(1)).max() > 1e-3
  # an ungrouped (encoder) module never gets noise
  enc = t5.model.attention(cfg, ("encoder", "layers_0", "attention"))
  np.testing.assert_array_equal(
    enc.apply(
      {"params": p | {"k": np.repeat(p["k"], 3, 1), "v": np.repeat(p["v"], 3, 1)}},
      xq,
      xkv,
      bias,
      False,
      rngs={"dropout": jax.random.PRNGKey(0)},
    ),
    enc.apply(
      {"params": p | {"k": np.repeat(p["k"], 3, 1), "v": np.repeat(p["v"], 3, 1)}}, xq, xkv, bias
    ),
  )


def _logits(params, cfg):
  ids, mask, dec = batch(cfg.vocab_size)
  return np.asarray(t5.T5(cfg).apply({"params": params}, ids, dec, mask))


def test_head_permutation_keeps_the_mha_function(v10):
  """Exact where no per-head position bias is involved (cross-attention). Self-attention heads
  read the stack's shared relative-position table by position, so there a permutation moves
  heads onto other bias rows: SimGQA (like the seed repository) accepts that."""
  _, params, cfg = v10
  only_cross = copy.deepcopy(params)
  for (s, l, m), _ in cfg.attention_modules():
    if m == "cross_attention":
      only_cross[s][l][m] = kv_merge.permute_heads(only_cross[s][l][m], [2, 0, 3, 1])
  np.testing.assert_allclose(_logits(only_cross, cfg), _logits(params, cfg), rtol=1e-5, atol=1e-5)


def test_similarity_groups_put_identical_heads_together():
  rng = np.random.RandomState(0)
  base = rng.randn(8, 4, 3)
  q = base[:, [0, 1, 2, 3, 0, 2, 1, 3]] + 1e-3 * rng.randn(
    8, 8, 3
  )  # twins: (0,4) (1,6) (2,5) (3,7)
  groups = kv_merge.similarity_groups(q, 4)
  assert sorted(groups) == [[0, 4], [1, 6], [2, 5], [3, 7]]
  sim = kv_merge.query_similarity(q)
  assert np.allclose(np.diag(sim), 1.0) and sim[0, 4] > 0.99


def test_simgqa_conversion_pools_similar_heads(v10):
  _, params, cfg = v10
  sparams, scfg = variants.from_mha(params, cfg, "simgqa", 2)
  for s, l, m in variants.grouped_paths(scfg):
    p = params[s][l][m]
    groups = kv_merge.similarity_groups(p["q"], 2)
    order = [h for grp in groups for h in grp]
    np.testing.assert_allclose(sparams[s][l][m]["q"], p["q"][:, order])
    np.testing.assert_allclose(sparams[s][l][m]["o"], p["o"][order])
    for gi, grp in enumerate(groups):  # each KV head is the mean of its similar heads
      np.testing.assert_allclose(sparams[s][l][m]["k"][:, gi], p["k"][:, grp].mean(1), atol=1e-6)
  # cross-attention: SimGQA is GQA over the permuted heads, which loads in HF as expanded MHA
  assert _logits(sparams, scfg).shape[-1] == cfg.vocab_size


def test_asymgqa_conversion_and_export_match_hf(v10, tmp_path):
  from transformers import T5ForConditionalGeneration

  _, params, cfg = v10
  aparams, acfg = variants.from_mha(params, cfg, "asymgqa", group_sizes=[1, 3])
  k = params["decoder"]["layers_0"]["self_attention"]["k"]
  np.testing.assert_allclose(
    aparams["decoder"]["layers_0"]["self_attention"]["k"],
    np.stack([k[:, 0], k[:, 1:].mean(1)], 1),
    atol=1e-6,
  )
  hf_io.save_hf(aparams, acfg, str(tmp_path))
  hf = T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  ids, mask, dec = batch(cfg.vocab_size)
  np.testing.assert_allclose(
    _logits(aparams, acfg), hf_logits(hf, ids, dec, mask), rtol=1e-5, atol=1e-5
  )


def test_variant_errors():
  with pytest.raises(ValueError, match="group_sizes"):
    T5Config(num_heads=6, grouping=Grouping(kv_heads=3, group_sizes=[3, 2, 2]))
  with pytest.raises(ValueError, match="allocation must be one of"):
    T5Config(grouping=Grouping(allocation="random"))
  with pytest.raises(ValueError, match="WGQA weights assume static"):
    T5Config(grouping=Grouping(kv_heads=2, weights="row", allocation="key_norm"))
  with pytest.raises(ValueError, match="needs group_sizes"):
    variants.from_mha({}, T5Config(), "asymgqa")
  with pytest.raises(ValueError, match="no fixed MHA equivalent"):
    variants.expand_to_mha({}, T5Config(grouping=Grouping(kv_heads=2, allocation="key_norm")))


def test_options_are_read_from_a_config_section_or_flags_by_the_same_names():
  """variants.options: the one place a run's grouping section becomes keyword arguments; unset
  keys are left out, so each variant's defaults (PGQA's noise 0.1) apply."""
  from wgqa_jax.training.config import base_config

  g = base_config().grouping
  assert variants.options(g) == {"group_encoder": False}
  assert variants.get("pgqa").grouping(4, 2, **variants.options(g)).attention_noise == 0.1
  g.unlock()
  g.attention_noise, g.group_sizes = 0.25, (1, 3)
  assert variants.options(g) == {
    "group_encoder": False,
    "group_sizes": (1, 3),
    "attention_noise": 0.25,
  }
  assert variants.options({"group_encoder": True, "group_sizes": None}) == {"group_encoder": True}
  with pytest.raises(ValueError, match="group_sizes only apply to asymgqa"):
    variants.get("gqa").check(**variants.options(g))
  with pytest.raises(ValueError, match="attention noise only applies to pgqa"):
    variants.get("asymgqa").check(**variants.options(g))
