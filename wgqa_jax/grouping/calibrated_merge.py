"""Merges of K/V heads that look at what the heads compute, not only at their kernels.

Both take one attention module's MHA params and `gram`, the (d, d) second moment sum x x^T of the
module's K/V inputs over calibration tokens (wgqa_jax.training.calibration): from it, every head's
key (value) covariance is W_h^T gram W_l, so no activation is kept. Both give plain GQA params (same
cache, same kernels, exportable); the maps between a head and its group's shared head are absorbed
into the head's query kernel (for K) or output kernel (for V).

- aligned (arXiv 2412.20677): an orthogonal map Q_h per head rotates it toward its group
  (generalised Procrustes on the calibration keys / values); q_h, k_h get Q_h and v_h gets P_h,
  o_h gets P_h^T, so the model is *unchanged* (`rotate`); then the group is mean-pooled.
- svd (arXiv 2406.07056): per group, the top-d_kv principal subspace of the stacked keys
  (values) [K_1 .. K_r] is the shared head: K_g = sum_h K_h U_h with U = [U_1; ..; U_r] its
  basis, and K_h ~ K_g U_h^T, absorbed as q_h -> q_h U_h (o_h -> U_h^T o_h).

Rotary embeddings (Llama) rotate every key's 2-D planes (dims j and j + d_kv/2) by a position's
angles, so a map on keys may only be one that commutes with that: per plane, a rotation (aligned)
or a rotation times a scale, i.e. a complex number (svd: complex PCA per plane). Since those
maps commute with the rotary angles, the pre-rotary statistics give the same optimum. Values and
T5's keys take any map.

- search: which heads share a KV head. Equal groups chosen by local search (head swaps) to
  minimise `proxy_error` of the svd merge, then svd. Only where reordering heads is exact (no
  per-head position bias: every Llama module, T5's cross-attention); elsewhere contiguous.

`proxy_error` (the keys' and values' relative reconstruction error on the calibration inputs)
scores any merge, mean-pooling included, without running the model.

Kernels are (d_model, heads, d_kv) as in our params; `o` is (heads, d_kv, d_model).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wgqa_jax.grouping import kv_merge
from wgqa_jax.grouping.kv_merge import permute_heads

METHODS = ("aligned", "svd", "search")


def head_groups(kv_index) -> list[np.ndarray]:
  """The query heads of each KV head, from the (H,) KV index of every query head."""
  kv_index = np.asarray(kv_index)
  return [np.flatnonzero(kv_index == g) for g in range(int(kv_index.max()) + 1)]


def planes(d_kv: int) -> list[tuple[int, int]]:
  """The rotary planes of a head (HF's rotate-half layout): dims (j, j + d_kv / 2)."""
  half = d_kv // 2
  return [(j, j + half) for j in range(half)]


class ModuleInputs(NamedTuple):
  """What a calibrated merge knows of one attention module besides its params."""

  gram: np.ndarray  # (d, d) sum of x x^T over its K/V inputs (wgqa_jax.training.calibration)
  rotary: bool = False  # keys are rotated by position (Llama): maps must commute with it
  reorderable: bool = False  # its heads may be reordered (no per-head position bias)


# ----------------------------------------------------------------------------------------------
# Maps per head
# ----------------------------------------------------------------------------------------------
def procrustes(m: np.ndarray, rotary: bool) -> np.ndarray:
  """The orthogonal Q maximising trace(Q^T m); with rotary embeddings, restricted to one
  rotation per plane (which commutes with them)."""
  if not rotary:
    u, _, vt = np.linalg.svd(m)
    return u @ vt
  q = np.zeros_like(m)
  for a, b in planes(m.shape[0]):
    theta = np.arctan2(m[b, a] - m[a, b], m[a, a] + m[b, b])
    c, s = np.cos(theta), np.sin(theta)
    q[a, a], q[a, b], q[b, a], q[b, b] = c, -s, s, c
  return q


def aligned_maps(gram, kernel, groups, rotary: bool = False, iters: int = 30) -> np.ndarray:
  """(H, d_kv, d_kv) orthogonal maps Q_h: head h's outputs x W_h Q_h are as close as possible
  (least squares over the calibration inputs) to the mean of its group's mapped outputs
  (generalised Procrustes, alternating; with `rotary` one rotation per plane)."""
  c = np.asarray(gram, np.float64)
  w = np.asarray(kernel, np.float64)
  h, dk = w.shape[1], w.shape[2]
  q = np.tile(np.eye(dk), (h, 1, 1))
  for group in groups:
    if len(group) < 2:
      continue
    cw = {i: c @ w[:, i] for i in group}  # (d, dk)
    for _ in range(iters):
      target = np.mean([w[:, i] @ q[i] for i in group], axis=0)  # (d, dk)
      new = {i: procrustes(cw[i].T @ target, rotary) for i in group}
      moved = max(np.abs(new[i] - q[i]).max() for i in group)
      for i in group:
        q[i] = new[i]
      if moved < 1e-10:
        break
  return q


def _as_plane_map(u: complex) -> np.ndarray:
  """Multiplication by the complex u on a plane's (x_a, x_b) = x_a + i x_b, as a (2, 2) map of
  row vectors: x -> x A(u)."""
  return np.array([[u.real, u.imag], [-u.imag, u.real]])


def pca_maps(gram, kernel, groups, rotary: bool = False) -> np.ndarray:
  """(H, d_kv, d_kv) maps U_h: the group's shared head is sum_h x W_h U_h, the projection of
  the stacked heads [x W_1 .. x W_r] on their top-d_kv principal subspace, and head h is
  reconstructed as (shared) U_h^T. With `rotary`, per plane the top complex principal component
  of the group's heads (so every U_h is a scaled rotation per plane)."""
  c = np.asarray(gram, np.float64)
  w = np.asarray(kernel, np.float64)
  h, dk = w.shape[1], w.shape[2]
  u = np.zeros((h, dk, dk))
  for group in groups:
    if not rotary:
      stacked = np.concatenate([w[:, i] for i in group], axis=1)  # (d, r dk)
      _, vecs = np.linalg.eigh(stacked.T @ c @ stacked)
      top = vecs[:, ::-1][:, :dk]  # (r dk, dk), largest eigenvalue first
      for n, i in enumerate(group):
        u[i] = top[n * dk : (n + 1) * dk]
      continue
    for a, b in planes(dk):
      # plane (a, b) of head i is the complex z_i = x (w_ia + i w_ib); cov = E[conj(z) z^T]
      re = np.stack([w[:, i, a] for i in group], axis=1)  # (d, r)
      im = np.stack([w[:, i, b] for i in group], axis=1)
      cov = (re.T @ c @ re + im.T @ c @ im) + 1j * (re.T @ c @ im - im.T @ c @ re)
      _, vecs = np.linalg.eigh(cov)
      top = vecs[:, -1]  # (r,), unit norm
      for n, i in enumerate(group):
        m = _as_plane_map(top[n])
        u[i][np.ix_([a, b], [a, b])] = m
  return u


# ----------------------------------------------------------------------------------------------
# Absorbing the maps
# ----------------------------------------------------------------------------------------------
def rotate(module: dict, qk: np.ndarray, pv: np.ndarray) -> dict:
  """MHA params with head h's q, k multiplied by the orthogonal qk[h] and v by pv[h] (o by
  pv[h]^T): exactly the same function (q.k and v o are unchanged), with rotated heads."""

  def per_head(kernel, maps):
    return np.einsum("dhk,hkl->dhl", np.asarray(kernel, np.float64), maps)

  out = dict(module)
  out["q"], out["k"] = per_head(module["q"], qk), per_head(module["k"], qk)
  out["v"] = per_head(module["v"], pv)
  out["o"] = np.einsum("hlk,hle->hke", pv, np.asarray(module["o"], np.float64))
  return {k: np.asarray(v, np.asarray(module[k]).dtype) for k, v in out.items()}


def merge_absorbed(module: dict, groups, uk: np.ndarray, uv: np.ndarray) -> dict:
  """GQA params from MHA params and per-head maps U (svd): the group's K kernel is
  sum_h W_h uk[h]; query kernel h becomes q_h uk[h] and output kernel h uv[h]^T o_h."""
  f64 = lambda x: np.asarray(x, np.float64)
  k, v, q, o = f64(module["k"]), f64(module["v"]), f64(module["q"]), f64(module["o"])
  out = dict(module)
  out["k"] = np.stack([sum(k[:, i] @ uk[i] for i in g) for g in groups], axis=1)
  out["v"] = np.stack([sum(v[:, i] @ uv[i] for i in g) for g in groups], axis=1)
  out["q"] = np.einsum("dhk,hkl->dhl", q, uk)
  out["o"] = np.einsum("hkl,hke->hle", uv, o)
  return {name: np.asarray(x, np.asarray(module[name]).dtype) for name, x in out.items()}


# ----------------------------------------------------------------------------------------------
# How well a merge keeps the heads (the proxy), and the grouping search that minimises it
# ----------------------------------------------------------------------------------------------
def encode_decode(method: str, gram, kernel, groups, rotary: bool = False):
  """(E, D), each (H, d_kv, d_kv): a merge's shared head is sum_h x W_h E_h over the group and
  head h is reconstructed as (shared) D_h. mean-pooling: E = I / r, D = I; aligned: E = Q_h / r,
  D = Q_h^T; svd: E = U_h, D = U_h^T."""
  h, dk = np.shape(kernel)[1:]
  sizes = np.zeros(h)
  for g in groups:
    sizes[g] = len(g)
  if method == "mean":
    return np.eye(dk)[None] / sizes[:, None, None], np.tile(np.eye(dk), (h, 1, 1))
  if method == "aligned":
    q = aligned_maps(gram, kernel, groups, rotary)
    return q / sizes[:, None, None], np.transpose(q, (0, 2, 1))
  if method in ("svd", "search"):
    u = pca_maps(gram, kernel, groups, rotary)
    return u, np.transpose(u, (0, 2, 1))
  raise ValueError(f"no reconstruction for merge {method!r}")


def relative_error(gram, kernel, groups, enc, dec) -> float:
  """sum_h |x W_h - (shared) D_h|^2 / sum_h |x W_h|^2 over the calibration inputs x."""
  c = np.asarray(gram, np.float64)
  w = np.asarray(kernel, np.float64)
  err = 0.0
  for g in groups:
    shared = sum(w[:, i] @ enc[i] for i in g)
    for i in g:
      r = w[:, i] - shared @ dec[i]
      err += np.trace(r.T @ c @ r)
  return float(err / np.einsum("dhk,de,ehk->", w, c, w))


def proxy_error(
  method: str, module: dict, gram, kv_index, rotary: bool, reorderable: bool = False
) -> float:
  """The calibration error of a merge ("mean", "aligned", "svd", "search"): the mean of the
  keys' and the values' relative reconstruction errors (0: the merged model reproduces every
  head). A cheap stand-in for the loss right after conversion (benchmarks/pareto reports how
  well it ranks)."""
  if method == "search":
    module, method = searched(module, gram, kv_index, rotary, reorderable), "svd"
  groups = head_groups(kv_index)
  errs = [
    relative_error(
      gram, module[name], groups, *encode_decode(method, gram, module[name], groups, rot)
    )
    for name, rot in (("k", rotary), ("v", False))
  ]
  return float(np.mean(errs))


def search_groups(module: dict, gram, num_groups: int, rotary: bool) -> list[list[int]]:
  """Equal-size groups of heads that the svd merge keeps best (lowest proxy_error): local
  search from the contiguous groups, swapping the two heads of different groups that lower the
  error most, until no swap does."""
  h = np.shape(module["q"])[1]
  size = h // num_groups
  groups = [list(range(g * size, (g + 1) * size)) for g in range(num_groups)]

  def cost(group):  # this group's share of the error
    sub = {k: np.asarray(module[k])[:, group] for k in ("k", "v")}
    return proxy_error("svd", sub, gram, np.zeros(len(group), int), rotary)

  costs = [cost(g) for g in groups]
  while True:
    best = (1e-12, None)
    for a in range(num_groups):
      for b in range(a + 1, num_groups):
        for i in groups[a]:
          for j in groups[b]:
            ga = sorted([x for x in groups[a] if x != i] + [j])
            gb = sorted([x for x in groups[b] if x != j] + [i])
            gain = costs[a] + costs[b] - cost(ga) - cost(gb)
            if gain > best[0]:
              best = (gain, (a, b, ga, gb))
    if best[1] is None:
      return groups
    a, b, ga, gb = best[1]
    groups[a], groups[b] = ga, gb
    costs[a], costs[b] = cost(ga), cost(gb)


def searched(module: dict, gram, kv_index, rotary: bool, reorderable: bool) -> dict:
  """The module with its heads reordered so that search_groups' groups are contiguous (left
  as it is where heads may not be reordered, or there is nothing to choose)."""
  g, h = int(np.max(kv_index)) + 1, len(kv_index)
  if not reorderable or g in (1, h):
    return module
  return permute_heads(module, [i for grp in search_groups(module, gram, g, rotary) for i in grp])


def merge(
  method: str, module: dict, gram, kv_index, rotary: bool, reorderable: bool = False
) -> dict:
  """One attention module's MHA params -> GQA params with `kv_index` (H,) groups, by
  `method` ("aligned", "svd", or "search": svd after search_groups, where the module's heads
  may be `reorderable`), from the module's calibration `gram`."""
  if method == "search":
    module, method = searched(module, gram, kv_index, rotary, reorderable), "svd"
  groups = head_groups(kv_index)
  if method == "aligned":
    qk = aligned_maps(gram, module["k"], groups, rotary)
    pv = aligned_maps(gram, module["v"], groups)
    rotated = rotate(module, qk, pv)
    sizes = [len(g) for g in groups]  # contiguous, as kv_index gives them
    return {**rotated, **{n: kv_merge.mean_pool(rotated[n], len(groups), sizes) for n in "kv"}}
  if method == "svd":
    return merge_absorbed(
      module,
      groups,
      pca_maps(gram, module["k"], groups, rotary),
      pca_maps(gram, module["v"], groups),
    )
  raise ValueError(f"unknown calibrated merge {method!r}; choose from {METHODS}")
