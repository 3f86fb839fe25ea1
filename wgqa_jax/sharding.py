"""Device mesh and logical-axis -> mesh-axis rules.

Mesh axes: "data" (batch; parameters replicated along it) and "model" (tensor parallel: heads,
MLP hidden and vocab split). A logical axis whose size does not divide the mesh axis (e.g. G = 2
KV heads on a model axis of 4) is replicated instead of failing.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

LOGICAL_RULES = (
    ("batch", "data"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
)


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A (data, model) mesh with Auto axes; data=-1 takes every device left over, an explicit
  data * model smaller than the device count uses the first data * model devices."""
  devices = jax.devices() if devices is None else devices
  if data > 0 and model > 0 and data * model > len(devices):
    raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices, "
                     f"but only {len(devices)} are available")
  if data > 0 and model > 0 and data * model < len(devices):
    devices = devices[:data * model]
  n = len(devices)
  if model <= 0 or n % model:
    raise ValueError(f"mesh model axis {model} does not divide the {n} devices")
  if data == -1:
    data = n // model
  if data * model != n:
    raise ValueError(f"mesh data={data} x model={model} != {n} available devices")
  return jax.make_mesh((data, model), ("data", "model"), devices=devices,
                       axis_types=(AxisType.Auto, AxisType.Auto))


def logical_to_spec(axes, shape, mesh: Mesh) -> P:
  rules = dict(LOGICAL_RULES)
  spec = []
  for name, size in zip(axes, shape):
    mesh_axis = rules.get(name)
    if mesh_axis is not None and size % mesh.shape[mesh_axis] == 0:
      spec.append(mesh_axis)
    else:
      spec.append(None)
  return P(*spec)


def param_shardings(axes_tree, shapes_tree, mesh: Mesh):
  """NamedShardings for a params tree, from its logical axes (model.param_axes)."""
  return jax.tree.map(
      lambda axes, shape: NamedSharding(mesh, logical_to_spec(tuple(axes), shape.shape, mesh)),
      axes_tree, shapes_tree, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


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
  """This process's rows of the global batch (wgqa_jax.pipeline.TrainBatches: process i holds
  rows [i*b, (i+1)*b)) -> global arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return {k: jax.device_put(np.asarray(v), sharding) for k, v in rows.items()}
  n = jax.process_count()
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v),
                                                    (len(v) * n, *np.shape(v)[1:]))
          for k, v in rows.items()}


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
  return put_process_batch({k: np.asarray(v)[i * (len(v) // n):(i + 1) * (len(v) // n)]
                            for k, v in batch.items()}, mesh)
