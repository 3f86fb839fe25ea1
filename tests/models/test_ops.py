"""wgqa_jax.models.ops: the dense contraction every model uses, and its CPU weight gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from wgqa_jax.models import ops


def test_dense_and_its_cpu_weight_gradient_match_numpy():
  """ops.dense (one 2-D matmul; on CPU a custom VJP that materialises x^T) against numpy."""
  rng = np.random.default_rng(0)
  for x_shape, w_shape, n_in in (((2, 3, 8), (8, 4, 5), 1), ((2, 3, 4, 5), (4, 5, 8), 2)):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    dy = rng.standard_normal(x_shape[:-n_in] + w_shape[n_in:]).astype(np.float32)
    axes = (list(range(x.ndim - n_in, x.ndim)), list(range(n_in)))
    np.testing.assert_allclose(
      ops.dense(x, w, n_in), np.tensordot(x, w, axes), rtol=1e-5, atol=1e-5
    )
    gx, gw = jax.grad(lambda a, b: jnp.sum(ops.dense(a, b, n_in) * dy), argnums=(0, 1))(x, w)
    out_axes = list(range(x.ndim - n_in, dy.ndim))
    np.testing.assert_allclose(
      gx, np.tensordot(dy, w, (out_axes, list(range(n_in, w.ndim)))), rtol=1e-4, atol=1e-4
    )
    lead = list(range(x.ndim - n_in))
    np.testing.assert_allclose(gw, np.tensordot(x, dy, (lead, lead)), rtol=1e-4, atol=1e-4)
