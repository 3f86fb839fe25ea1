"""Grouping variants from the literature, each against its defining property / a numpy reference:
SimGQA, AsymGQA (unequal static groups), KDGQA / DGQA (key-norm allocation), PGQA (noise)."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import V10, batch, hf_logits
from test_grouping import v10  # noqa: F401  (module fixture: tiny HF v1.0 + our MHA params)
import copy

from wgqa_jax import grouping, variants
from wgqa_jax import hf as hf_io
from wgqa_jax.models import t5
from wgqa_jax.models.t5_config import T5Config
from wgqa_jax.variants import Grouping


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
  attn = t5.attention(cfg, "decoder")
  rng = np.random.RandomState(0)
  xq, xkv = rng.randn(2, 5, 16).astype(np.float32), rng.randn(2, 7, 16).astype(np.float32)
  bias = rng.randn(1, cfg.num_heads, 5, 7).astype(np.float32)
  params = jax.tree.map(np.array, nn.unbox(attn.init(jax.random.PRNGKey(1), xq, xkv, bias)["params"]))
  return attn, params, xq, xkv, bias


def test_allocation_matches_reference():
  rng = np.random.RandomState(0)
  for _ in range(50):
    g = rng.randint(1, 6)
    h = g * rng.randint(1, 4) + rng.randint(0, 3)
    norms = rng.rand(g) + 0.01
    got = np.asarray(grouping.allocate_queries(norms[None], h))[0]
    assert got.tolist() == ref_allocate(norms.tolist(), h)
    idx = np.asarray(grouping.kv_index_from_counts(got[None], h))[0]
    assert idx.tolist() == [i for i, n in enumerate(got) for _ in range(n)]


def test_asymmetric_groups_attention_matches_reference():
  cfg = T5Config(d_model=16, d_kv=4, num_heads=6, dropout_rate=0.0,
                 grouping=Grouping(kv_heads=3, group_sizes=[3, 1, 2]))
  attn, p, xq, xkv, bias = module(cfg)
  assert p["k"].shape == (16, 3, 4)
  got = np.asarray(attn.apply({"params": p}, xq, xkv, bias))
  for b in range(2):
    want = ref_gathered_attention(xq[b], xkv[b], p["q"], p["k"], p["v"], p["o"], bias[0],
                                  [0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("allocation", ["key_norm", "kernel_norm"])
def test_key_norm_allocation_attention_matches_reference(allocation):
  cfg = T5Config(d_model=16, d_kv=4, num_heads=6, dropout_rate=0.0,
                 grouping=Grouping(kv_heads=2, allocation=allocation))
  attn, p, xq, xkv, bias = module(cfg)
  p["k"][:, 1] *= 3.0  # make KV head 1 clearly the larger one
  got = np.asarray(attn.apply({"params": p}, xq, xkv, bias))
  for b in range(2):
    if allocation == "key_norm":  # KDGQA: this example's keys
      keys = np.einsum("sd,dgk->sgk", xkv[b], p["k"])
      norms = np.sqrt((keys ** 2).sum(axis=(0, 2)))
    else:  # DGQA: the kernels
      norms = np.sqrt((p["k"] ** 2).sum(axis=(0, 2)))
    counts = ref_allocate(norms.tolist(), 6)
    assert counts[1] > counts[0]
    index = [i for i, n in enumerate(counts) for _ in range(n)]
    want = ref_gathered_attention(xq[b], xkv[b], p["q"], p["k"], p["v"], p["o"], bias[0], index)
    np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


def test_equal_norms_allocate_like_gqa():
  cfg = T5Config(d_model=16, d_kv=4, num_heads=6, dropout_rate=0.0,
                 grouping=Grouping(kv_heads=3, allocation="kernel_norm"))
  attn, p, xq, xkv, bias = module(cfg)
  p["k"] = np.repeat(p["k"][:, :1], 3, axis=1)  # identical kernels -> equal norms -> 2 each
  got = attn.apply({"params": p}, xq, xkv, bias)
  gqa = t5.attention(cfg.replace(grouping=cfg.grouping.replace(allocation="static")), "decoder")
  np.testing.assert_allclose(got, gqa.apply({"params": p}, xq, xkv, bias), rtol=1e-5, atol=1e-6)


def test_pgqa_noise_only_while_training():
  cfg = T5Config(d_model=16, d_kv=4, num_heads=6, dropout_rate=0.0,
                 grouping=Grouping(kv_heads=2, noise=0.5))
  attn, p, xq, xkv, bias = module(cfg)
  plain = t5.attention(cfg.replace(grouping=cfg.grouping.replace(noise=0.0)), "decoder")
  np.testing.assert_array_equal(attn.apply({"params": p}, xq, xkv, bias),
                                plain.apply({"params": p}, xq, xkv, bias))
  run = lambda seed: np.asarray(attn.apply({"params": p}, xq, xkv, bias, False,
                                           rngs={"dropout": jax.random.PRNGKey(seed)}))
  np.testing.assert_array_equal(run(0), run(0))
  assert np.abs(run(0) - run(1)).max() > 1e-3
  # an ungrouped (encoder) module never gets noise
  enc = t5.attention(cfg, "encoder")
  np.testing.assert_array_equal(enc.apply({"params": p | {"k": np.repeat(p["k"], 3, 1),
                                                          "v": np.repeat(p["v"], 3, 1)}},
                                          xq, xkv, bias, False,
                                          rngs={"dropout": jax.random.PRNGKey(0)}),
                                enc.apply({"params": p | {"k": np.repeat(p["k"], 3, 1),
                                                          "v": np.repeat(p["v"], 3, 1)}},
                                          xq, xkv, bias))


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
      only_cross[s][l][m] = grouping.permute_heads(only_cross[s][l][m], [2, 0, 3, 1])
  np.testing.assert_allclose(_logits(only_cross, cfg), _logits(params, cfg), rtol=1e-5, atol=1e-5)


def test_similarity_groups_put_identical_heads_together():
  rng = np.random.RandomState(0)
  base = rng.randn(8, 4, 3)
  q = base[:, [0, 1, 2, 3, 0, 2, 1, 3]] + 1e-3 * rng.randn(8, 8, 3)  # twins: (0,4) (1,6) (2,5) (3,7)
  groups = grouping.similarity_groups(q, 4)
  assert sorted(groups) == [[0, 4], [1, 6], [2, 5], [3, 7]]
  sim = grouping.query_similarity(q)
  assert np.allclose(np.diag(sim), 1.0) and sim[0, 4] > 0.99


def test_simgqa_conversion_pools_similar_heads(v10):
  _, params, cfg = v10
  sparams, scfg = variants.from_mha(params, cfg, "simgqa", 2)
  for s, l, m in variants.grouped_paths(scfg):
    p = params[s][l][m]
    groups = grouping.similarity_groups(p["q"], 2)
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
  np.testing.assert_allclose(aparams["decoder"]["layers_0"]["self_attention"]["k"],
                             np.stack([k[:, 0], k[:, 1:].mean(1)], 1), atol=1e-6)
  hf_io.save_hf(aparams, acfg, str(tmp_path))
  hf = T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  ids, mask, dec = batch(cfg.vocab_size)
  np.testing.assert_allclose(_logits(aparams, acfg), hf_logits(hf, ids, dec, mask), rtol=1e-5,
                             atol=1e-5)


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
