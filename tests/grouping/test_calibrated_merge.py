"""Calibrated merges (wgqa_jax.grouping.calibrated_merge) against independent references: numpy PCA
of explicit activations (real, and complex per rotary plane), attention logits and outputs computed
head by head, and whole models (the rotation step leaves logits unchanged)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgqa_jax import models
from wgqa_jax.grouping import calibrated_merge as cm, kv_merge
from wgqa_jax.models.attention import rotary

D, H, DK, N = 12, 4, 4, 300


def activations(seed=0):
  rng = np.random.default_rng(seed)
  x = 0.1 * rng.standard_normal((N, D)) @ rng.standard_normal((D, D))  # correlated, logits O(1)
  return x, x.T @ x


def kernels(seed=1):
  rng = np.random.default_rng(seed)
  return {
    "q": rng.standard_normal((D, H, DK)),
    "k": rng.standard_normal((D, H, DK)),
    "v": rng.standard_normal((D, H, DK)),
    "o": rng.standard_normal((H, DK, D)),
  }


def plane_maps(rng, scale: bool):
  """(H, dk, dk) random per-plane rotations (times a scale): maps that commute with rotary."""
  out = np.zeros((H, DK, DK))
  for h in range(H):
    for a, b in cm.planes(DK):
      t, r = rng.uniform(0, 2 * np.pi), (rng.uniform(0.5, 2) if scale else 1.0)
      out[h][np.ix_([a, b], [a, b])] = r * np.array(
        [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
      )
  return out


def logits_and_outputs(x, m, kv_index, rope: bool):
  """Per query head: attention logits (h, t, s) and outputs (t, d), head by head in numpy
  (rotary positions 0..N-1 when `rope`)."""
  pos = np.arange(len(x))
  rot = lambda y: (
    np.asarray(rotary(jnp.asarray(y)[None, :, None], pos, 10000.0))[0, :, 0] if rope else y
  )
  logits, outs = [], []
  for h in range(H):
    g = kv_index[h]
    s = rot(x @ m["q"][:, h]) @ rot(x @ m["k"][:, g]).T
    logits.append(s)
    p = np.exp(s - s.max(-1, keepdims=True))
    outs.append((p / p.sum(-1, keepdims=True)) @ (x @ m["v"][:, g]) @ m["o"][h])
  return np.stack(logits), np.sum(outs, axis=0)


def copies_of_one_head(m, maps_k, maps_v):
  """m with every head's K (V) kernel head 0's times that head's map."""
  return {
    **m,
    "k": np.stack([m["k"][:, 0] @ a for a in maps_k], axis=1),
    "v": np.stack([m["v"][:, 0] @ a for a in maps_v], axis=1),
  }


def assert_same_attention(got, want):
  for w_, g_ in zip(want, got):
    np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=1e-5 * np.abs(w_).max())


def reconstruction(x, merged_k, maps, groups):
  """Each head's keys as the merge reconstructs them: (shared) U_h^T, (N, H, dk)."""
  out = np.zeros((len(x), H, DK))
  for g, heads in enumerate(groups):
    for h in heads:
      out[:, h] = (x @ merged_k[:, g]) @ maps[h].T
  return out


# ------------------------------------------------------------------------------ svd (PCA) ----
def test_svd_equals_numpy_pca_of_the_stacked_keys():
  x, gram = activations()
  w = kernels()["k"]
  groups = cm.head_groups(kv_merge.kv_index(H, 2))
  maps = cm.pca_maps(gram, w, groups)
  merged = cm.merge_absorbed(kernels(), groups, maps, maps)["k"]
  ours = reconstruction(x, merged, maps, groups)
  for heads in groups:
    z = np.concatenate([x @ w[:, h] for h in heads], axis=1)  # (N, r dk)
    vt = np.linalg.svd(z, full_matrices=False)[2][:DK]
    ref = z @ vt.T @ vt
    np.testing.assert_allclose(
      np.concatenate([ours[:, h] for h in heads], axis=1),
      ref,
      rtol=1e-6,
      atol=1e-6 * np.abs(ref).max(),
    )


def test_rotary_svd_equals_complex_pca_per_plane():
  x, gram = activations(2)
  w = kernels(3)["k"]
  groups = cm.head_groups(kv_merge.kv_index(H, 1))
  maps = cm.pca_maps(gram, w, groups, rotary=True)
  ours = reconstruction(x, cm.merge_absorbed(kernels(3), groups, maps, maps)["k"], maps, groups)
  for a, b in cm.planes(DK):
    z = np.stack([x @ w[:, h, a] + 1j * (x @ w[:, h, b]) for h in range(H)], axis=1)  # (N, H)
    v = np.linalg.svd(z, full_matrices=False)[2][0].conj()  # top right singular vector
    ref = z @ np.outer(v, v.conj())
    np.testing.assert_allclose(ours[:, :, a] + 1j * ours[:, :, b], ref, atol=1e-6 * abs(ref).max())
  # every map is a scaled rotation per plane, so it commutes with the rotary embedding
  for h in range(H):
    for a, b in cm.planes(DK):
      m = maps[h][np.ix_([a, b], [a, b])]
      np.testing.assert_allclose(m[0, 0], m[1, 1], atol=1e-12)
      np.testing.assert_allclose(m[0, 1], -m[1, 0], atol=1e-12)


@pytest.mark.parametrize("rope", [False, True])
def test_svd_is_exact_when_a_group_shares_one_subspace(rope):
  """Heads whose keys and values are maps of one shared head (per-plane scaled rotations with
  rotary) merge without changing any logit or output; mean-pooling them does change them."""
  x, gram = activations(4)
  rng = np.random.default_rng(5)
  m = copies_of_one_head(
    kernels(6),
    plane_maps(rng, scale=True) if rope else rng.standard_normal((H, DK, DK)),
    rng.standard_normal((H, DK, DK)),
  )
  index = kv_merge.kv_index(H, 1)
  want = logits_and_outputs(x, m, np.arange(H), rope)
  assert_same_attention(
    logits_and_outputs(x, cm.merge("svd", m, gram, index, rope), index, rope), want
  )
  pooled = {**m, "k": kv_merge.mean_pool(m["k"], 1), "v": kv_merge.mean_pool(m["v"], 1)}
  assert not np.allclose(logits_and_outputs(x, pooled, index, rope)[0], want[0], rtol=1e-2)


def test_rotary_needs_the_constrained_maps():
  """Mutation check of the rotary constraint: unconstrained PCA maps on rotary keys are not
  exact where the per-plane ones are."""
  x, gram = activations(4)
  rng = np.random.default_rng(5)
  m = kernels(6)
  a_k = plane_maps(rng, scale=True)
  m["k"] = np.stack([m["k"][:, 0] @ a_k[h] for h in range(H)], axis=1)
  m["k"][:, :, 0] += 0.3 * rng.standard_normal((D, H))  # no longer exactly shared
  index = kv_merge.kv_index(H, 1)
  want = logits_and_outputs(x, m, np.arange(H), True)[0]
  err = lambda r: np.abs(
    logits_and_outputs(x, cm.merge("svd", m, gram, index, r), index, True)[0] - want
  ).mean()
  assert err(True) < err(False)


# ------------------------------------------------------------------------------- aligned ----
@pytest.mark.parametrize("rope", [False, True])
def test_aligned_is_exact_for_rotated_copies_of_one_head(rope):
  x, gram = activations(7)
  rng = np.random.default_rng(8)
  orthogonal = lambda: np.stack([np.linalg.qr(rng.standard_normal((DK, DK)))[0] for _ in range(H)])
  m = copies_of_one_head(
    kernels(9), plane_maps(rng, scale=False) if rope else orthogonal(), orthogonal()
  )
  index = kv_merge.kv_index(H, 2)
  want = logits_and_outputs(x, m, np.arange(H), rope)
  assert_same_attention(
    logits_and_outputs(x, cm.merge("aligned", m, gram, index, rope), index, rope), want
  )


@pytest.mark.parametrize("rope", [False, True])
def test_rotation_step_changes_nothing_and_merges_reconstruct_in_order(rope):
  """Before pooling, the aligned model is the MHA model; reconstruction error of the
  calibration keys: svd <= aligned <= mean-pooling (each optimal over a larger family)."""
  x, gram = activations(10)
  m = kernels(11)
  groups = cm.head_groups(kv_merge.kv_index(H, 2))
  qk, pv = cm.aligned_maps(gram, m["k"], groups, rope), cm.aligned_maps(gram, m["v"], groups)
  for maps in (qk, pv):
    np.testing.assert_allclose(
      np.einsum("hij,hkj->hik", maps, maps), np.tile(np.eye(DK), (H, 1, 1)), atol=1e-10
    )
  assert_same_attention(
    logits_and_outputs(x, cm.rotate(m, qk, pv), np.arange(H), rope),
    logits_and_outputs(x, m, np.arange(H), rope),
  )

  keys = np.stack([x @ m["k"][:, h] for h in range(H)], axis=1)

  def error(maps, merged):
    return np.sum((reconstruction(x, merged, maps, groups) - keys) ** 2)

  eye = np.tile(np.eye(DK), (H, 1, 1))
  mean = error(eye, kv_merge.mean_pool(m["k"], 2))
  aligned = error(qk, cm.merge("aligned", m, gram, kv_merge.kv_index(H, 2), rope)["k"])
  svd_maps = cm.pca_maps(gram, m["k"], groups, rope)
  svd = error(svd_maps, cm.merge_absorbed(m, groups, svd_maps, svd_maps)["k"])
  assert svd <= aligned * (1 + 1e-9) and aligned < mean


# ------------------------------------------------------------------------- whole models ----
def _model_logits(cfg, params):
  ids = jnp.asarray(np.random.default_rng(0).integers(2, cfg.vocab_size, (2, 9)), jnp.int32)
  if cfg.family == 'llama':
    from wgqa_jax.models.llama import Llama

    return np.asarray(Llama(cfg).apply({"params": params}, ids))
  from wgqa_jax.models.t5 import T5

  return np.asarray(T5(cfg).apply({"params": params}, ids, ids[:, :5]))


@pytest.mark.parametrize("arch", ["tiny", "llama-tiny"])
def test_rotating_every_head_of_a_real_model_leaves_its_logits(arch):
  """The aligned step on a whole model (T5: any orthogonal map; Llama: per-plane rotations,
  which commute with RoPE). For Llama, unconstrained maps do change the logits."""
  from wgqa_jax.grouping import variants

  cfg = models.preset(arch)
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(1)))
  rope = cfg.family == 'llama'
  rng = np.random.default_rng(0)
  h, dk = cfg.num_heads, cfg.head_dim if rope else cfg.d_kv

  def rotate(constrained):
    def fn(m, _path):
      qk = np.stack([cm.procrustes(rng.standard_normal((dk, dk)), constrained) for _ in range(h)])
      pv = np.stack([np.linalg.qr(rng.standard_normal((dk, dk)))[0] for _ in range(h)])
      return cm.rotate({k: np.asarray(v) for k, v in m.items()}, qk, pv)

    return variants.map_modules(params, [p for p, _ in cfg.attention_modules()], fn)

  want = _model_logits(cfg, params)
  np.testing.assert_allclose(_model_logits(cfg, rotate(rope)), want, atol=1e-5, rtol=1e-5)
  if rope:
    assert np.abs(_model_logits(cfg, rotate(False)) - want).max() > 1e-3


# ------------------------------------------------------------------ proxy and group search ----
def test_proxy_error_of_mean_pooling_equals_explicit_activations():
  x, gram = activations(12)
  m = kernels(13)
  index = kv_merge.kv_index(H, 2)
  errs = []
  for name in ("k", "v"):
    heads = np.stack([x @ m[name][:, h] for h in range(H)], axis=1)  # (N, H, dk)
    pooled = np.stack([heads[:, index == g].mean(axis=1) for g in range(2)], axis=1)
    errs.append(np.sum((heads - pooled[:, index]) ** 2) / np.sum(heads**2))
  np.testing.assert_allclose(
    cm.proxy_error("mean", m, gram, index, False), np.mean(errs), rtol=1e-9
  )
  assert cm.proxy_error("svd", m, gram, index, False) < cm.proxy_error(
    "mean", m, gram, index, False
  )


@pytest.mark.parametrize("rope", [False, True])
def test_search_finds_planted_groups_and_then_merges_exactly(rope):
  """Eight heads, two hidden families sharing one subspace each (0, 3, 5, 6 and 1, 2, 4, 7):
  the search finds them and the merged model keeps every logit and output; contiguous svd, or
  a module whose heads may not move, does not."""
  global H
  saved, H = H, 8
  try:
    x, gram = activations(14)
    rng = np.random.default_rng(15)
    m = {"q": rng.standard_normal((D, H, DK)), "o": rng.standard_normal((H, DK, D))}
    family = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    for name in ("k", "v"):
      base = rng.standard_normal((D, 2, DK))
      maps = (
        plane_maps(rng, scale=True) if (rope and name == "k") else rng.standard_normal((H, DK, DK))
      )
      m[name] = np.stack([base[:, family[h]] @ maps[h] for h in range(H)], axis=1)
    groups = cm.search_groups(m, gram, 2, rope)
    assert sorted(map(sorted, groups)) == [[0, 3, 5, 6], [1, 2, 4, 7]]
    index = kv_merge.kv_index(H, 2)
    want = logits_and_outputs(x, m, np.arange(H), rope)
    got = logits_and_outputs(
      x, cm.merge("search", m, gram, index, rope, reorderable=True), index, rope
    )
    perm = [h for g in groups for h in g]  # the heads moved: head perm[i] is now at i
    np.testing.assert_allclose(got[0], want[0][perm], rtol=1e-5, atol=1e-5 * np.abs(want[0]).max())
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5 * np.abs(want[1]).max())
    for kept in (
      cm.merge("svd", m, gram, index, rope),
      cm.merge("search", m, gram, index, rope, reorderable=False),
    ):
      assert not np.allclose(logits_and_outputs(x, kept, index, rope)[1], want[1], rtol=1e-2)
  finally:
    H = saved
