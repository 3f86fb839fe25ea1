"""MHA -> MLA (wgqa_jax.grouping.latent_merge, models.attention's latent form) against
independent references: numpy SVD and complex PCA of explicit activations, the MHA model itself
(at full rank the converted model is the same function), uncached forward passes (decoding of the
latent cache), and the cache's own arrays (cache_bytes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgqa_jax import models
from wgqa_jax.decoding import GenerationConfig, generate
from wgqa_jax.grouping import calibrated_merge as cm, latent_merge as lm, variants
from wgqa_jax.grouping.variants import Grouping

D, H, DK, N = 16, 4, 4, 400


def activations(seed=0):
  rng = np.random.default_rng(seed)
  x = 0.1 * rng.standard_normal((N, D)) @ rng.standard_normal((D, D))
  return x, x.T @ x


def kernels(seed=1):
  rng = np.random.default_rng(seed)
  m = {n: rng.standard_normal((D, H, DK)) for n in "qkv"}
  m["v"] *= 0.2  # values smaller than keys: the balancing must matter
  return {**m, "o": rng.standard_normal((H, DK, D))}


def heads(x, kernel):
  return np.einsum("nd,dhk->nhk", x, kernel)


# ------------------------------------------------------------------- the factorisation ----
@pytest.mark.parametrize("rank", [3, 10, 2 * H * DK])
def test_latent_is_the_best_balanced_fit_numpy_svd_finds(rank):
  """Without rotary keys, latent @ [k_up v_up] reconstructs the keys and values as the top-r
  SVD of the explicit activations [a X K, X V] does, a^2 = |XV|^2 / |XK|^2."""
  x, gram = activations()
  m = kernels()
  out = lm.to_latent(m, gram, rank, rotary=False)
  xk, xv = heads(x, m["k"]).reshape(N, -1), heads(x, m["v"]).reshape(N, -1)
  a = np.linalg.norm(xv) / np.linalg.norm(xk)
  u, s, vt = np.linalg.svd(np.concatenate([a * xk, xv], axis=1), full_matrices=False)
  best = (u[:, :rank] * s[:rank]) @ vt[:rank]
  c = x @ out["latent"]
  got_k = np.einsum("nr,rhk->nhk", c, out["k_up"]).reshape(N, -1)
  got_v = np.einsum("nr,rhk->nhk", c, out["v_up"]).reshape(N, -1)
  scale = np.abs(best).max()
  np.testing.assert_allclose(a * got_k, best[:, : H * DK], atol=1e-9 * scale)
  np.testing.assert_allclose(got_v, best[:, H * DK :], atol=1e-9 * scale)
  # and the proxy is the mean relative error of keys and values at that rank
  want = 0.5 * (
    np.sum((got_k - xk) ** 2) / np.sum(xk**2) + np.sum((got_v - xv) ** 2) / np.sum(xv**2)
  )
  np.testing.assert_allclose(lm.proxy_errors(m, gram, False)[rank], want, atol=1e-10)


def test_rotary_split_is_complex_pca_per_plane_and_loses_nothing_with_every_head():
  """Per plane, the shared rotary keys are the top complex principal components of the heads'
  explicit keys (numpy SVD of the (N, H) complex matrix, up to a phase), and rotary key + query
  weights + residual rebuild q_h . k_h for every pair of tokens at every rotation."""
  x, gram = activations(2)
  m = kernels(3)
  q_rope, k_rope, residual = lm.rotary_split(m, gram, rope_heads=1)
  xq, xk = heads(x, m["q"]), heads(x, m["k"])
  theta = np.random.default_rng(4).uniform(0, 2 * np.pi, (DK // 2,))
  for j, (a, b) in enumerate(cm.planes(DK)):
    z = xk[:, :, a] + 1j * xk[:, :, b]  # (N, H)
    _, _, vh = np.linalg.svd(z, full_matrices=False)
    want = z @ vh[0].conj()  # top component
    got = x @ (k_rope[:, 0, a] + 1j * k_rope[:, 0, b])
    phase = np.vdot(got, want) / abs(np.vdot(got, want))
    np.testing.assert_allclose(got * phase, want, atol=1e-9 * np.abs(want).max())
    # the pairwise logits of this plane, keys turned by a rotary angle: the shared rotary key
    # read through each head's query weights, plus the residual, is the MHA logit (the model
    # then drops the residual's rotation: the conversion's one approximation)
    rot = np.exp(1j * theta[j])
    zq = xq[:, :, a] + 1j * xq[:, :, b]
    zqr = x @ (q_rope[:, :, 0, a] + 1j * q_rope[:, :, 0, b])  # (N, H)
    zres = x @ (residual[:, :, a] + 1j * residual[:, :, b])
    mha = np.real(np.conj(zq)[:, None] * (rot * z)[None])  # (N, N, H)
    ours = np.real(np.conj(zqr)[:, None] * (rot * got)[None, :, None]) + np.real(
      np.conj(zq)[:, None] * (rot * zres)[None]
    )
    np.testing.assert_allclose(ours, mha, atol=1e-9 * np.abs(mha).max())
  # with as many rotary key heads as heads nothing is left over
  assert np.abs(lm.rotary_split(m, gram, rope_heads=H)[2]).max() < 1e-9


# ----------------------------------------------------------------------- whole models ----
def _logits(cfg, params, ids):
  if cfg.family == "llama":
    from wgqa_jax.models.llama import Llama

    return np.asarray(Llama(cfg).apply({"params": params}, ids))
  from wgqa_jax.models.t5 import T5

  return np.asarray(T5(cfg).apply({"params": params}, ids, ids[:, :5]))


def converted(arch, rank, rope_heads, seed=1):
  cfg = models.preset(arch)
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(seed)))
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((cfg.width, cfg.width))
  gram = a @ a.T
  new_cfg = cfg.replace(grouping=Grouping(latent_rank=rank, rope_heads=rope_heads))
  new = variants.map_modules(
    params,
    variants.grouped_paths(new_cfg),
    lambda m, _p: lm.to_latent(
      {k: np.asarray(v) for k, v in m.items()}, gram, rank, cfg.rotary_keys, rope_heads
    ),
  )
  return params, cfg, new, new_cfg


@pytest.mark.parametrize(
  "arch,rank,rope_heads",
  [("llama-tiny", 128, 4), ("llama-tiny", 64, 4), ("tiny", 128, 1), ("tiny", 64, 1)],
)
def test_full_rank_mla_is_the_mha_model(arch, rank, rope_heads):
  """At the full K/V width (2 H d_kv = 128), or at d_model (64: the latent is then the layer
  input itself), with a rotary key head per head, the MLA model computes the MHA model's
  logits; with one rotary key head and a low rank it does not (the test can fail)."""
  params, cfg, new, new_cfg = converted(arch, rank, rope_heads)
  ids = jnp.asarray(np.random.default_rng(0).integers(2, cfg.vocab_size, (2, 9)), jnp.int32)
  want = _logits(cfg, params, ids)
  np.testing.assert_allclose(_logits(new_cfg, new, ids), want, atol=1e-5, rtol=1e-5)
  _, _, low, low_cfg = converted(arch, 8, 1)
  assert np.abs(_logits(low_cfg, low, ids) - want).max() > 1e-3


def _greedy_uncached(params, cfg, ids, n):
  out = np.asarray(ids)
  for _ in range(n):
    nxt = _logits(cfg, params, jnp.asarray(out))[:, -1].argmax(-1)
    out = np.concatenate([out, nxt[:, None]], axis=1)
  return out[:, ids.shape[1] :]


@pytest.mark.parametrize("arch", ["llama-tiny", "tiny"])
def test_latent_cache_decodes_as_the_uncached_model_and_holds_only_the_latent(arch):
  """Cached greedy decoding of an MLA model (absorbed form over the latent cache) equals
  re-running the whole model at every step (expanded form), token for token; the cache holds
  (rows, slots, rank) latents and (rows, slots, rope_heads, d_kv) rotary keys, as cache_bytes
  says."""
  _, cfg, params, mla_cfg = converted(arch, 24, 1, seed=5)
  family = models.family_of(mla_cfg)
  ids = np.random.default_rng(6).integers(3, cfg.vocab_size, (2, 7)).astype(np.int32)
  mask = np.ones_like(ids) if arch == "llama-tiny" else None  # prompts as they are
  gen = GenerationConfig(max_new_tokens=8)
  got = np.asarray(generate(params, mla_cfg, ids, gen, attention_mask=mask))
  if arch == "llama-tiny":
    from wgqa_jax.models.llama import Llama

    np.testing.assert_array_equal(got[:, :8], _greedy_uncached(params, mla_cfg, ids, 8))
    cache = Llama(mla_cfg).apply({"params": params}, 2, 7 + 8, method=Llama.init_cache)
    assert cache[0]["k"].shape == (2, 15, 24) and cache[0]["v"].shape == (2, 15, 1, cfg.head_dim)
    assert sum(x.nbytes for x in jax.tree.leaves(cache)) == family.cache_bytes(mla_cfg, 2, 7, 8)
    width = 24 + cfg.head_dim  # rank + one rotary key head, per layer and token
  else:
    from references import greedy_uncached

    np.testing.assert_array_equal(got, greedy_uncached(params, ids, mla_cfg, 8))
    width = 24
  mha = family.cache_bytes(cfg, 1, 7, 8)
  assert family.cache_bytes(mla_cfg, 1, 7, 8) * 2 * cfg.num_heads * cfg.head_dim == mha * width


def test_an_mqa_model_becomes_mla_at_its_own_kv_bytes_without_loss():
  """From a grouped form (here MQA, expanded to its MHA equivalent first, as convert does):
  with one shared key head the rotary step leaves nothing over and the values fit a latent of
  rank d_kv, so MLA at MQA's KV bytes (rank d_kv + one rotary key) is the MQA model itself
  (TransMLA's observation that MLA holds GQA at equal cache)."""
  cfg = models.preset("llama-tiny")
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(7)))
  mqa, mqa_cfg = variants.from_mha(params, cfg, "mqa")
  mha, mha_cfg = variants.expand_to_mha(mqa, mqa_cfg)
  rng = np.random.default_rng(7)

  class Stats:
    def gram(self, path):
      a = rng.standard_normal((cfg.width, cfg.width))
      return a @ a.T

  mla, mla_cfg = variants.from_mha(mha, mha_cfg, "mla", 1, calibration=Stats())
  assert mla_cfg.grouping.latent_rank == cfg.head_dim
  family = models.family_of(cfg)
  assert family.cache_bytes(mla_cfg, 1, 5, 5) == family.cache_bytes(mqa_cfg, 1, 5, 5)
  ids = jnp.asarray(rng.integers(2, cfg.vocab_size, (2, 9)), jnp.int32)
  want = _logits(mqa_cfg, mqa, ids)
  np.testing.assert_allclose(_logits(mla_cfg, mla, ids), want, atol=1e-5, rtol=1e-5)
