"""The memory options (docs/gpu.md): bf16 params with stochastic rounding, Adafactor, the
optimizer state offloaded to host memory; the NaN guard's per-leaf selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from builders import losses, tiny, tiny_model_and_batch

from wgqa_jax.core import sharding
from wgqa_jax.store import params_io
from wgqa_jax.training import loop_parts, steps, trainer
from wgqa_jax.training.config import base_config


def test_stochastic_rounding_is_unbiased_and_keeps_exact_values():
  lo = np.float32(np.asarray(jnp.bfloat16(0.02), np.float32))  # a bf16 value
  ulp = np.float32(2.0**-13)  # bf16 spacing at 0.02 (in [2**-6, 2**-5), 7 stored bits)
  frac = np.float32(0.1)
  x = jnp.full((200_000,), lo + frac * ulp, jnp.float32)
  rounded = np.asarray(steps.stochastic_round(x, jnp.uint32(7)), np.float32)
  assert set(np.unique(rounded)) == {lo, lo + ulp}  # only the two neighbours
  # rounded up about 10% of the time: unbiased (std of the fraction ~ 0.0007)
  assert abs((rounded == lo + ulp).mean() - frac) < 0.005
  assert abs(rounded.mean() - (lo + frac * ulp)) < 0.01 * ulp
  neg = np.asarray(steps.stochastic_round(-x, jnp.uint32(8)), np.float32)
  assert abs((neg == -(lo + ulp)).mean() - frac) < 0.005  # by magnitude, for negatives too
  exact = jnp.asarray(np.linspace(-3, 3, 1001), jnp.bfloat16).astype(jnp.float32)
  np.testing.assert_array_equal(steps.stochastic_round(exact, jnp.uint32(9)), exact)
  # other seeds, other draws
  other = np.asarray(steps.stochastic_round(x, jnp.uint32(10)), np.float32)
  assert (other != rounded).any()


def test_tiny_updates_move_bf16_params_on_average():
  """lr x update far below bf16's precision: round-to-nearest never moves the param, the
  stochastic rounding moves it by the update on average."""
  p = {"w": jnp.full((100_000,), 0.02, jnp.bfloat16)}
  u = {"w": jnp.full((100_000,), 1e-6, jnp.float32)}  # 1/122 of an ulp
  assert (optax_apply(p, u)["w"] == p["w"]).all()
  moved = steps.apply_updates(p, u, jax.random.PRNGKey(0))["w"].astype(jnp.float32)
  assert moved.dtype == jnp.float32 and abs(float(moved.mean()) - (0.02 + 1e-6) - dev(p)) < 2e-7


def optax_apply(p, u):
  import optax

  return optax.apply_updates(p, u)


def dev(p):
  """How far bf16(0.02) is from 0.02."""
  return float(p["w"][0].astype(jnp.float32)) - 0.02


def test_adafactor_state_is_sharded_like_its_params_where_it_has_their_shape():
  c = tiny(**{"optim.optimizer": "adafactor", "model.arch": "t5-small"})
  from wgqa_jax.lab import plan
  from wgqa_jax.store.resolve import resolve

  cfg = plan.model_config(c, resolve(c.model.init_from, c.model.arch))
  mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "model"))
  tx, _ = steps.make_optimizer(c.optim, 100)
  with sharding.use_rules(sharding.Rules.with_overrides()):
    shard = steps.state_shardings(cfg, tx, mesh)
  state = steps.abstract_state(cfg, tx, shard)
  params = dict(jax.tree_util.tree_leaves_with_path(state["params"]))
  split = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(state["opt_state"]):
    key = jax.tree_util.keystr(path)
    twin = next((p for k, p in params.items() if key.endswith(jax.tree_util.keystr(k))), None)
    if twin is not None and leaf.shape == twin.shape:
      assert leaf.sharding == twin.sharding, key
      split += leaf.sharding.spec != twin.sharding.spec.__class__()
    else:  # factored row / column statistics and counters: small, replicated
      assert leaf.sharding.spec == jax.sharding.PartitionSpec(), key
  assert split > 0  # some unfactored statistics follow their FSDP-split params
  # the factored statistics are a small fraction of AdamW's two moments
  n = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert n(state["opt_state"]) < 0.1 * n(state["params"])


def test_offloaded_bf16_adafactor_run_resumes_exactly_and_learns(tmp_path):
  """bf16 params, Adafactor, its state in host memory (pinned_host) on FSDP over 2 devices:
  a run preempted at step 10 and resumed equals the uninterrupted one, whose params stay
  bf16 and whose loss falls."""
  kw = {
    "model.param_dtype": "bfloat16",
    "optim.optimizer": "adafactor",
    "optim.offload_state": True,
    "mesh.fsdp": 2,
    "optim.num_train_steps": 30,
  }
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  trainer.train(tiny(**kw), full)
  with pytest.raises(trainer.Preempted):
    trainer.train(tiny(**kw), cut, stop_after=10)
  trainer.train(tiny(**kw), cut)
  a, b = losses(full), losses(cut)
  assert sorted(a) == sorted(b) and a[30] < 0.7 * a[5], a
  np.testing.assert_allclose([b[k] for k in (15, 20, 30)], [a[k] for k in (15, 20, 30)], rtol=1e-6)
  params, cfg = params_io.load(str(tmp_path / "full" / "final"))
  assert cfg.param_dtype == "bfloat16"
  assert {np.asarray(x).dtype.name for x in jax.tree.leaves(params)} == {"bfloat16"}


def test_offloaded_state_equals_the_state_in_device_memory():
  """The same step, the optimizer state in host memory or not: the same numbers."""
  cfg, params, batch = tiny_model_and_batch()
  optim = base_config().optim
  tx, _ = steps.make_optimizer(optim, 100)
  auto = (jax.sharding.AxisType.Auto,) * 3
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "model"), auto, devices=jax.devices()[:1])
  out = {}
  for offload in (False, True):
    optim.offload_state = offload
    shard = steps.state_shardings(cfg, tx, mesh, offload)
    state = steps.init_state(jax.tree.map(np.asarray, params), tx, shard)  # (it donates)
    kinds = {x.sharding.memory_kind for x in jax.tree.leaves(state["opt_state"])}
    assert kinds == ({"pinned_host"} if offload else {"device"})
    step = steps.compile_train_step(cfg, optim, tx, shard, mesh)
    with jax.set_mesh(mesh):
      for i in range(3):
        state, _ = step(state, sharding.put_process_batch(batch, mesh), jax.random.PRNGKey(i))
    assert {x.sharding.memory_kind for x in jax.tree.leaves(state["opt_state"])} == kinds
    out[offload] = jax.device_get(state)
  for x, y in zip(jax.tree.leaves(out[False]), jax.tree.leaves(out[True]), strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_non_finite_update_of_finite_gradients_stops_the_run():
  guard = loop_parts.SkipGuard(3)

  class Ckpts:
    dir = "/w/checkpoints"

    def steps(self):
      return [10, 20, 30]

  guard.observe(29, False, False, Ckpts())
  with pytest.raises(
    loop_parts.Diverged, match="step 30 made params.*last good checkpoint is step 20"
  ):
    guard.observe(30, False, True, Ckpts())
