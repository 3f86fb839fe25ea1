"""dense(): the projection every layer uses, with a weight gradient that is fast on XLA:CPU.

The weight gradient of y = x W is x^T dy, a matmul whose left operand is transposed ("TN").
XLA:CPU runs that layout at ~70% of its plain ("NN") speed (benchmarks/RESULTS.md: 130 vs
177 GFLOP/s at t5-small's shapes), and weight gradients are a third of a train step's FLOPs.
On CPU we materialise x^T first (an optimization barrier stops XLA from folding the transpose
back into the dot), which costs one copy and recovers the NN speed. Other backends keep the
plain autodiff matmul: their GEMMs take any layout at full speed.
"""

from __future__ import annotations

import math

import jax


@jax.custom_vjp
def _matmul_cpu(a, b):
  return a @ b


def _fwd(a, b):
  return a @ b, (a, b)


def _bwd(res, g):
  a, b = res
  return g @ b.T, jax.lax.optimization_barrier(a.T) @ g


_matmul_cpu.defvjp(_fwd, _bwd)


def dense(x, kernel, n_in: int = 1, transpose_weight_grad_on_cpu: bool = True):
  """Contract the last n_in axes of x with the first n_in axes of kernel:
  x (..., *in) and kernel (*in, *out) -> (..., *out), as one 2-D matmul.

  transpose_weight_grad_on_cpu: a model config field (so jit caches each setting apart); the
  benchmark turns it off to time the difference."""
  lead, k_in = x.shape[:-n_in], math.prod(x.shape[len(x.shape) - n_in :])
  out = kernel.shape[n_in:]
  a, b = x.reshape(-1, k_in), kernel.reshape(k_in, -1)
  cpu = transpose_weight_grad_on_cpu and jax.default_backend() == "cpu"
  y = _matmul_cpu(a, b) if cpu else a @ b
  return y.reshape(*lead, *out)
