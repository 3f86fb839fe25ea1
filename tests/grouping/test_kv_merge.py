"""Merging K/V heads into groups (wgqa_jax.grouping.kv_merge) against plain-numpy loops: mean
pooling,
expansion back to MHA, WGQA weighted sums."""

import numpy as np
import pytest
from references import ref_weighted_sum

from wgqa_jax.grouping import kv_merge
from wgqa_jax.grouping.variants import Grouping
from wgqa_jax.models.t5.config import T5Config


# ---------------------------------------------------------------- numpy references (loops) ----
def ref_mean_pool(kernel, g):
  d, h, dk = kernel.shape
  size = h // g
  out = np.zeros((d, g, dk), np.float64)
  for head in range(h):
    out[:, head // size] += kernel[:, head] / size
  return out


# ---------------------------------------------------------------------------------- tests ----
@pytest.mark.parametrize("g", [1, 2, 3, 6])
def test_mean_pool_and_expand_match_reference(g):
  kernel = np.random.RandomState(0).randn(5, 6, 4).astype(np.float32)
  np.testing.assert_allclose(kv_merge.mean_pool(kernel, g), ref_mean_pool(kernel, g), atol=1e-6)
  expanded = kv_merge.expand(kv_merge.mean_pool(kernel, g), 6)
  for head in range(6):
    np.testing.assert_array_equal(
      expanded[:, head], kv_merge.mean_pool(kernel, g)[:, head // (6 // g)]
    )


@pytest.mark.parametrize("shape", [(6,), (6, 4)])
def test_weighted_sum_matches_reference(shape):
  rng = np.random.RandomState(1)
  kernel, w = rng.randn(5, 6, 4).astype(np.float32), rng.randn(*shape).astype(np.float32)
  np.testing.assert_allclose(
    kv_merge.weighted_sum(kernel, w, 2), ref_weighted_sum(kernel, w, 2), atol=1e-5
  )


def test_grouping_rejects_indivisible_heads():
  with pytest.raises(ValueError, match="not divisible"):
    kv_merge.mean_pool(np.zeros((4, 6, 2)), 4)
  with pytest.raises(ValueError, match="not divisible by kv_heads=4"):
    T5Config(num_heads=6, grouping=Grouping(kv_heads=4))
