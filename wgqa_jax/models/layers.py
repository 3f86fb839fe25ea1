"""Layers every model family shares (attention is wgqa_jax.models.attention)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from wgqa_jax.core.errors import UserError
from wgqa_jax.models.attention import CALIBRATION


class RMSNorm(nn.Module):
  """T5's layer norm and Llama's RMSNorm: no mean subtraction, no bias, computed in float32,
  the result in the compute dtype."""

  dim: int
  eps: float
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      (self.dim,),
      jnp.dtype(self.param_dtype),
    )
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (jnp.asarray(scale, jnp.float32) * x).astype(jnp.dtype(self.dtype))


# ----------------------------------------------------------------------------------------------
# Layer stacks for real sizes: rematerialisation and scanned layers (training only)
# ----------------------------------------------------------------------------------------------
REMAT_POLICIES = {
  "none": None,  # keep every activation for the backward pass
  "full": jax.checkpoint_policies.nothing_saveable,  # keep each layer's input only
  # keep the projections' outputs (matmuls without batch dims), recompute the rest
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(layer_cls, policy: str, static_argnums: tuple[int, ...] = (), scanned: bool = False):
  """layer_cls, rematerialised by `policy` (REMAT_POLICIES). static_argnums count `self` as 0
  (the layer's Python-bool `deterministic`)."""
  if policy not in REMAT_POLICIES:
    raise UserError(f"remat={policy!r}: choose from {sorted(REMAT_POLICIES)}")
  if policy == "none":
    return layer_cls
  # inside a scan the loop already keeps XLA from merging forward and recomputation
  return nn.remat(
    layer_cls, policy=REMAT_POLICIES[policy], static_argnums=static_argnums, prevent_cse=not scanned
  )


def scan(layer_cls, length: int, broadcast_args: int):
  """`length` layers as one scanned layer (one compiled body whatever the depth): layer_cls's
  __call__ takes (carry, *broadcast_args) and returns (carry, None); its params get a leading
  layer axis under one `layers` node (stack_layers gives that layout)."""
  # the calibration statistics of the attention modules (wgqa_jax.training.calibration) stack like
  # params
  return nn.scan(
    layer_cls,
    variable_axes={"params": 0, CALIBRATION: 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=(nn.broadcast,) * broadcast_args,
    length=length,
    metadata_params={nn.PARTITION_NAME: "layers"},
  )


def _layer_index(key: str) -> int | None:
  prefix, _, index = key.partition("_")
  return int(index) if prefix == "layers" and index.isdigit() else None


def stack_layers(params):
  """Per-layer params (every node's `layers_0` ... `layers_{n-1}`, the one layout of checkpoints,
  hf.py and variants) -> the scanned layout: one `layers` node whose leaves are stacked on a
  leading axis. Inside a jitted step this is one copy of the layers' params."""
  if not isinstance(params, dict):
    return params
  per_layer = sorted((i, k) for k in params if (i := _layer_index(k)) is not None)
  out = {k: stack_layers(v) for k, v in params.items() if _layer_index(k) is None}
  if per_layer:
    if [i for i, _ in per_layer] != list(range(len(per_layer))):
      raise ValueError(f"layers are not numbered 0..n-1: {[k for _, k in per_layer]}")
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for _, k in per_layer])
  return out


def unstack_layers(params):
  """The scanned layout -> per-layer params (the inverse of stack_layers)."""
  if not isinstance(params, dict):
    return params
  out = {k: unstack_layers(v) for k, v in params.items() if k != "layers"}
  if "layers" in params:
    n = jax.tree.leaves(params["layers"])[0].shape[0]
    out.update({f"layers_{i}": jax.tree.map(lambda x: x[i], params["layers"]) for i in range(n)})
  return out


def module_params(params, cfg):
  """The params in the layout cfg's modules take (scanned when cfg.scan_layers)."""
  return stack_layers(params) if cfg.scan_layers else params


def plain(cfg):
  """cfg without the training-only layer options: per-layer modules, nothing rematerialised
  (what decoding, init and param shapes use)."""
  return cfg.replace(remat="none", scan_layers=False)
