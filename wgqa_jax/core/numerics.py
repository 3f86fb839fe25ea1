"""Checks on arrays every layer can share, jitted: finiteness (the train step's NaN guard, the
checkpoints' and params' verification) and a fingerprint of an array's bits (what a checkpoint's
integrity record holds)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _on_host(x) -> bool:
  """A concrete global array in host memory (an offloaded optimizer state)."""
  return (
    isinstance(x, jax.Array)
    and not isinstance(x, jax.core.Tracer)
    and getattr(x.sharding, "memory_kind", None) == "pinned_host"
  )


def _split_by_memory(tree):
  """(leaves, treedef, which leaves are in host memory, the others)."""
  leaves, treedef = jax.tree.flatten(tree)
  host = [_on_host(x) for x in leaves]
  return leaves, treedef, host, [x for x, h in zip(leaves, host, strict=True) if not h]


def _to_device(x):
  return jax.device_put(x, x.sharding.with_memory_kind("device"))


# A leaf in host memory (optim.offload_state) is checked alone, brought to the device by itself:
# the check needs one leaf's room on the device, not the whole optimizer state's.
def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite."""
  leaves, _, host, on_device = _split_by_memory(tree)
  ok = _all_finite(on_device)
  for x, h in zip(leaves, host, strict=True):
    if h:
      ok = ok & _all_finite(_to_device(x))
  return ok


@jax.jit
def _all_finite(tree) -> jax.Array:
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


def fingerprint(tree):
  """Per leaf: (sum of bits, sum of bits * (position % 65521 + 1)), both mod 2**32: flipped,
  garbled or reordered bytes change it."""
  leaves, treedef, host, on_device = _split_by_memory(tree)
  done = iter(_fingerprint(on_device))
  return treedef.unflatten(
    [_fingerprint(_to_device(x)) if h else next(done) for x, h in zip(leaves, host, strict=True)]
  )


@jax.jit
def _fingerprint(tree):
  def one(x):
    u = _bits(x)
    pos = (jnp.arange(u.shape[0], dtype=jnp.uint32) % jnp.uint32(65521)) + jnp.uint32(1)
    return jnp.stack([jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * pos, dtype=jnp.uint32)])

  return jax.tree.map(one, tree)
