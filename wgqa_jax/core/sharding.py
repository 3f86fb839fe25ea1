"""Device mesh, logical-axis -> mesh-axis rules, and placement of host data on the mesh.

Mesh axes (data, fsdp, model), as MaxText and t5x name them:
- "data": pure data parallelism; params and optimizer state are replicated along it.
- "fsdp": data parallelism whose devices also split the params and the optimizer state (ZeRO-3):
  each param is sharded along its `embed` dimension (or, lacking one that divides, its largest
  dimension that does), and XLA all-gathers a layer's weights just before it uses them.
- "model": tensor parallelism: heads, MLP hidden units and the vocabulary are split.
The batch is split over data x fsdp. Ordinary setups put fsdp within a host and data across hosts.

Params and activations have separate rules (PARAM_RULES, ACTIVATION_RULES): a weight's `embed`
dimension is split over fsdp, an activation's is not (its batch already is). A logical axis whose
size does not divide its mesh axes (e.g. G = 2 KV heads on a model axis of 4) is left unsplit
instead of failing. A run may override either set, as t5x's and MaxText's logical axis rules
(config mesh.param_rules / mesh.activation_rules, e.g. "mlp=none,vocab=fsdp", a+b for two mesh
axes); `use_rules` puts a `Rules` in force for everything traced under it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from wgqa_jax.core.errors import UserError

AXES = ("data", "fsdp", "model")
BATCH = ("data", "fsdp")  # the mesh axes a batch is split over

# logical axis -> mesh axis (or axes), for params
PARAM_RULES = {
  "embed": "fsdp",
  "heads": "model",
  "kv_heads": "model",
  "mlp": "model",
  "vocab": "model",
}
# ... and for activations (constrain, in the models)
ACTIVATION_RULES = {
  "batch": BATCH,
  "heads": "model",
  "kv_heads": "model",
  "mlp": "model",
  "vocab": "model",
}
# every logical axis name the models give their params and activations
LOGICAL_AXES = (
  "batch",
  "length",
  "embed",
  "heads",
  "kv_heads",
  "kv",
  "mlp",
  "vocab",
  "relpos_buckets",
  "latent",  # MLA: the latent's rank (unsplit)
  "rope_heads",  # MLA: the shared rotary key heads (unsplit)
)


@dataclasses.dataclass(frozen=True)
class Rules:
  """Logical axis -> mesh axis (a name, a tuple of names, or None: unsplit), for params and
  for activations."""

  params: dict = dataclasses.field(default_factory=lambda: dict(PARAM_RULES))
  activations: dict = dataclasses.field(default_factory=lambda: dict(ACTIVATION_RULES))

  @classmethod
  def with_overrides(cls, params: str | None = None, activations: str | None = None) -> Rules:
    """The default rules with overrides "logical=mesh,..." applied (mesh: an axis, a+b, or
    none)."""
    return cls(
      {**PARAM_RULES, **parse_rules(params, "mesh.param_rules")},
      {**ACTIVATION_RULES, **parse_rules(activations, "mesh.activation_rules")},
    )


def parse_rules(text: str | None, key: str) -> dict:
  """ "embed=fsdp,mlp=none,batch=data+fsdp" -> {"embed": "fsdp", "mlp": None, "batch": (...)}"""
  out = {}
  for item in filter(None, (t.strip() for t in (text or "").split(","))):
    logical, sep, target = (x.strip() for x in item.partition("="))
    if not sep or logical not in LOGICAL_AXES:
      raise UserError(
        f"config.{key}={text!r}: {item!r} is not LOGICAL=MESH_AXIS with a logical "
        f"axis of {list(LOGICAL_AXES)}"
      )
    axes = tuple(a.strip() for a in target.split("+"))
    if target.lower() == "none":
      out[logical] = None
    elif all(a in AXES for a in axes):
      out[logical] = axes[0] if len(axes) == 1 else axes
    else:
      raise UserError(
        f"config.{key}={text!r}: {target!r} is not a mesh axis of {list(AXES)} (or a+b, or none)"
      )
  return out


_active = Rules()


@contextlib.contextmanager
def use_rules(rules: Rules):
  """Trace and place under `rules` (param_shardings and constrain read them)."""
  global _active
  previous, _active = _active, rules
  try:
    yield
  finally:
    _active = previous


def active_rules() -> Rules:
  return _active


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, model) mesh with Auto axes. One of data / fsdp may be -1: every device the
  other axes leave. A product smaller than the device count uses the first devices."""
  devices = jax.devices() if devices is None else devices
  sizes = {"data": data, "fsdp": fsdp, "model": model}
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1 or sizes["model"] == -1:
    raise UserError(f"mesh {sizes}: only one of data / fsdp may be -1 (the devices left over)")
  for k, v in sizes.items():
    if v != -1 and (not isinstance(v, int) or v <= 0):
      raise UserError(f"mesh {k}={v!r} must be a positive int (or -1 for data / fsdp)")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  n = len(devices)
  if free:
    if n % fixed:
      raise UserError(
        f"mesh {' x '.join(f'{k}={v}' for k, v in sizes.items() if v != -1)} "
        f"does not divide the {n} devices"
      )
    sizes[free[0]] = n // fixed
  total = math.prod(sizes.values())
  if total > n:
    raise UserError(
      f"mesh {' x '.join(f'{k}={v}' for k, v in sizes.items())} needs {total} "
      f"devices, but only {n} are available"
    )
  return jax.make_mesh(
    tuple(sizes[a] for a in AXES),
    AXES,
    devices=devices[:total],
    axis_types=(AxisType.Auto,) * len(AXES),
  )


def _ways(mesh_axes, mesh_shape) -> int:
  names = mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)
  return math.prod(mesh_shape[a] for a in names)


def _spec(axes, shape, rules: dict, mesh_shape) -> list:
  spec, used = [], set()
  for name, size in zip(axes, shape):
    mesh_axes = rules.get(name)
    if mesh_axes is not None:
      # a mesh axis splits one dimension at most: an earlier dimension keeps it (overridden
      # rules may name it twice, e.g. vocab=fsdp+model beside embed=fsdp)
      free = tuple(
        a for a in (mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)) if a not in used
      )
      mesh_axes = None if not free else free[0] if len(free) == 1 else free
    if mesh_axes is not None and size % _ways(mesh_axes, mesh_shape):
      # a tuple that does not divide: try its first axis alone (batch: data without fsdp)
      mesh_axes = (
        mesh_axes[0]
        if isinstance(mesh_axes, tuple) and size % mesh_shape[mesh_axes[0]] == 0
        else None
      )
    if mesh_axes is not None:
      used.update(mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,))
    spec.append(mesh_axes)
  return spec


def logical_to_spec(axes, shape, mesh: Mesh) -> P:
  """A param's PartitionSpec from its logical axes (the rules in force). fsdp goes on `embed`;
  a param without an embed dimension that divides (norm scales of another size,
  relative-position tables, WGQA weights) gets fsdp on its largest free dimension that divides,
  or none."""
  spec = _spec(axes, shape, _active.params, mesh.shape)
  fsdp = mesh.shape["fsdp"]
  used = {a for s in spec if s for a in (s if isinstance(s, tuple) else (s,))}
  if fsdp > 1 and "fsdp" not in used:
    free = [i for i, (s, size) in enumerate(zip(spec, shape)) if s is None and size % fsdp == 0]
    if free:
      spec[max(free, key=lambda i: shape[i])] = "fsdp"
  return P(*spec)


def param_shardings(axes_tree, shapes_tree, mesh: Mesh):
  """NamedShardings for a params tree, from its logical axes (model.param_axes)."""
  return jax.tree.map(
    lambda axes, shape: NamedSharding(mesh, logical_to_spec(tuple(axes), shape.shape, mesh)),
    axes_tree,
    shapes_tree,
    is_leaf=lambda x: isinstance(x, P),
  )


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree`'s arrays (or shapes) placed as `shardings`: what jit lowers and
  orbax restores onto, nothing allocated."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def constrain(x, axes):
  """Pin an activation's sharding by its logical axes (the activation rules in force) when a
  mesh is set (jax.set_mesh: training and sharded eval); a no-op otherwise (tests,
  single-device decoding)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return x
  return jax.lax.with_sharding_constraint(
    x, P(*_spec(axes, x.shape, _active.activations, mesh.shape))
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH))


def batch_ways(mesh: Mesh) -> int:
  """How many ways a batch is split (data x fsdp)."""
  return _ways(BATCH, mesh.shape)


def to_host(tree):
  """Global arrays -> numpy, on every process. Arrays that span other hosts' devices are
  all-gathered, so every process must call this (it is a collective when process_count > 1)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(fetch, tree)


def put_process_batch(rows: dict, mesh: Mesh) -> dict:
  """This process's rows of the global batch (wgqa_jax.data.pipeline.TrainBatches: process i holds
  rows [i*b, (i+1)*b)) -> global arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return {k: jax.device_put(np.asarray(v), sharding) for k, v in rows.items()}
  n = jax.process_count()
  return {
    k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (len(v) * n, *np.shape(v)[1:])
    )
    for k, v in rows.items()
  }


def gather_rows(x: np.ndarray) -> np.ndarray:
  """(process_count, *x.shape): every process's x, on every process (a collective)."""
  if jax.process_count() == 1:
    return np.asarray(x)[None]
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """A global host numpy batch that every process holds whole (eval) -> global arrays sharded
  over the data axis (single and multi-host): each process passes its rows."""
  n, i = jax.process_count(), jax.process_index()
  return put_process_batch(
    {k: np.asarray(v)[i * (len(v) // n) : (i + 1) * (len(v) // n)] for k, v in batch.items()}, mesh
  )
