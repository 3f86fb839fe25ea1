"""MHA -> multi-head latent attention (MLA), from what the heads compute on calibration data.

An MLA module (models.attention, `Grouping.latent_rank`) caches per token one latent
c = x A of rank r, and its H heads read keys and values up-projected from it: k_h = c B_h,
v_h = c C_h (DeepSeek-V2/V3). Where keys are rotary (Llama), the up-projected keys carry no
position: positions come from `rope_heads` small rotary key heads, shared by all query heads
and cached beside the latent. The conversion has two steps, both on the module's calibration
gram (the (d, d) sum x x^T of its K/V inputs, wgqa_jax.training.calibration):

1. Rotary keys (TransMLA's RoRoPE, arXiv 2502.07864, with complex mixing). Rotary embeddings
   turn every head's 2-D plane j by the same angle, so per plane any complex-linear mix of the
   H heads' keys commutes with them. Per plane, the top `rope_heads` complex principal
   components of the H heads' keys (on the calibration inputs) become the shared rotary key
   heads, each query head reading them through its own complex scale (exact: any invertible
   mix is absorbed into the queries); what the components leave of each head's keys goes to
   the latent without rotation. That is the one approximation beyond the rank: with rope_heads
   = H nothing is left and the model is unchanged. We take TransMLA's choice over MHA2MLA's
   (arXiv 2502.14837: keep, per head, the frequency planes with the largest |q||k|) because
   its rotary key is one head shared by all query heads, which the DeepSeek-V3 format holds
   and absorbed decoding needs, where MHA2MLA keeps rotary dims in every head.
2. A joint low-rank factorisation of the (unrotated) keys and the values, covariance-weighted:
   A = [a K  V] E_r and [a B  C] = E_r^T, E_r the top-r eigenvectors of [a K  V]^T gram
   [a K  V], so x A [B C] is the best rank-r fit to the keys and values on the calibration
   inputs (not on the raw weights). The keys are weighted by a = sqrt(|x V|^2 / |x K|^2)
   (TransMLA balances K and V likewise): the fit then minimises the sum of the keys' and the
   values' relative errors, the same `proxy_error` the grouping merges are scored by. At rank
   min(d, 2 H d_kv) the fit is exact (rank d: the latent is the layer's input itself).

Kernels as in our params: q, k, v (d, H, d_kv), o (H, d_kv, d); MLA params latent (d, r),
k_up, v_up (r, H, d_kv), and with rotary keys q_rope (d, H, rope_heads, d_kv), k_rope
(d, rope_heads, d_kv).
"""

from __future__ import annotations

import numpy as np

from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping.calibrated_merge import planes


def rotary_split(module: dict, gram, rope_heads: int):
  """Step 1: (q_rope (d, H, n, d_kv), k_rope (d, n, d_kv), residual keys (d, H, d_kv)) with
  n = rope_heads: per plane the top-n complex principal components of the heads' keys, each
  query head's complex weights on them, and what they leave of each head's keys."""
  c = np.asarray(gram, np.float64)
  q, k = (np.asarray(module[n], np.float64) for n in ("q", "k"))
  d, h, dk = k.shape
  q_rope, k_rope = np.zeros((d, h, rope_heads, dk)), np.zeros((d, rope_heads, dk))
  residual = np.zeros_like(k)
  for a, b in planes(dk):
    zk = k[:, :, a] + 1j * k[:, :, b]  # (d, H): head h's plane is x zk[:, h]
    cov = zk.conj().T @ c @ zk  # (H, H) Hermitian: E[conj(z)^T z]
    _, vecs = np.linalg.eigh(cov)
    top = vecs[:, ::-1][:, :rope_heads]  # (H, n), largest first
    shared = zk @ top  # (d, n): component j is sum_h z_h top[h, j]
    k_rope[:, :, a], k_rope[:, :, b] = shared.real, shared.imag
    # q_h . k_h over the plane = Re(conj(zq_h) z_h) and z_h = sum_j comp_j conj(top[h, j]) +
    # residual, so the query of head h on component j is zq_h top[h, j]
    zq = q[:, :, a] + 1j * q[:, :, b]
    qr = zq[:, :, None] * top[None]  # (d, H, n)
    q_rope[..., a], q_rope[..., b] = qr.real, qr.imag
    left = zk - shared @ top.conj().T
    residual[:, :, a], residual[:, :, b] = left.real, left.imag
  return q_rope, k_rope, residual


def _joint(keys, values, full_keys, gram):
  """(eigenvalues, eigenvectors (largest first), key weight a, the weighted kernels [a K V],
  the full keys' and the values' energies |XK|^2, |XV|^2) of the balanced joint factorisation
  of keys and values (step 2)."""
  c = np.asarray(gram, np.float64)
  d = keys.shape[0]
  energy = lambda w: float(np.einsum("dx,de,ex->", w, c, w))
  k_energy, v_energy = energy(full_keys.reshape(d, -1)), energy(values.reshape(d, -1))
  a = np.sqrt(v_energy / k_energy) if k_energy > 0 and v_energy > 0 else 1.0
  w = np.concatenate([a * keys.reshape(d, -1), values.reshape(d, -1)], axis=1)
  vals, vecs = np.linalg.eigh(w.T @ c @ w)
  return vals[::-1], vecs[:, ::-1], a, w, k_energy, v_energy


def to_latent(module: dict, gram, rank: int, rotary: bool, rope_heads: int = 1) -> dict:
  """One attention module's MHA params {q, k, v, o} -> MLA params of latent `rank`."""
  k, v = (np.asarray(module[n], np.float64) for n in ("k", "v"))
  d, h, dk = k.shape
  if not 1 <= rank <= 2 * h * dk:
    raise UserError(f"a latent rank must be 1..{2 * h * dk} (2 H d_kv) here, got {rank}")
  out = {"q": module["q"], "o": module["o"]}
  keys = k
  if rotary:
    q_rope, k_rope, keys = rotary_split(module, gram, rope_heads)
    out.update(q_rope=q_rope, k_rope=k_rope)
  _, vecs, a, w, _, _ = _joint(keys, v, k, gram)
  top = vecs[:, :rank]  # (2 H dk, r)
  out["latent"] = w @ top
  out["k_up"] = (top[: h * dk].T / a).reshape(rank, h, dk)
  out["v_up"] = top[h * dk :].T.reshape(rank, h, dk)
  dtype = np.asarray(module["q"]).dtype
  return {name: np.asarray(x, dtype) for name, x in out.items()}


def proxy_errors(module: dict, gram, rotary: bool, rope_heads: int = 1) -> np.ndarray:
  """(2 H d_kv + 1,) the calibration error of the MLA conversion at every rank 0..2 H d_kv: the
  mean of the keys' and the values' relative reconstruction errors on the calibration inputs,
  as calibrated_merge.proxy_error scores the grouping merges (the rotary keys count as kept;
  their positions dropped from the residual are not scored)."""
  k, v = (np.asarray(module[n], np.float64) for n in ("k", "v"))
  h, dk = k.shape[1:]
  keys = rotary_split(module, gram, rope_heads)[2] if rotary else k
  vals, vecs, a, _, k_total, v_total = _joint(keys, v, k, gram)
  vals = np.maximum(vals, 0.0)
  k_share = np.sum(vecs[: h * dk] ** 2, axis=0)  # how much of each component is keys
  # the error left at rank r: the components from r on (their key part is weighted by a^2)
  tail = lambda x: np.concatenate([np.cumsum(x[::-1])[::-1], [0.0]])
  k_err = tail(vals * k_share) / (a * a) / max(k_total, 1e-30)
  v_err = tail(vals * (1 - k_share)) / max(v_total, 1e-30)
  return np.clip(0.5 * (k_err + v_err), 0.0, None)
