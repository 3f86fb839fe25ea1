"""Checks on arrays every layer can share, jitted: finiteness (the train step's NaN guard, the
checkpoints' and params' verification) and a fingerprint of an array's bits (what a checkpoint's
integrity record holds)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite."""
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _bits(x):
  """The array's bits as uint32 (any dtype of 1, 2 or 4 bytes per element; bool as uint8)."""
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = x.dtype.itemsize
  if width == 8:  # a 64-bit value as two 32-bit words
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


@jax.jit
def fingerprint(tree):
  """Per leaf: (sum of bits, sum of bits * (position % 65521 + 1)), both mod 2**32: flipped,
  garbled or reordered bytes change it."""

  def one(x):
    u = _bits(x)
    pos = (jnp.arange(u.shape[0], dtype=jnp.uint32) % jnp.uint32(65521)) + jnp.uint32(1)
    return jnp.stack([jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * pos, dtype=jnp.uint32)])

  return jax.tree.map(one, tree)
