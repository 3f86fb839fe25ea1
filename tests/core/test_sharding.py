"""Real-size machinery at toy size: the (data, fsdp, model) mesh, FSDP param and optimizer-state
shardings, remat and scanned layers; each checked against one device or the plain model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from wgqa_jax import models
from wgqa_jax.core import sharding
from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping import variants
from wgqa_jax.models import layers
from wgqa_jax.training import objectives, preflight, steps as train_step
from wgqa_jax.training.config import base_config


def model_and_batch(arch: str, variant: str = "wgqa", b: int = 8):
  cfg = models.preset(arch)
  params = models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(0))
  params, cfg = variants.from_mha(jax.device_get(params), cfg, variant, 2)
  rng = np.random.RandomState(0)
  batch = {
    "inputs": rng.randint(3, 100, (b, 16)).astype(np.int32),
    "targets": rng.randint(3, 100, (b, 8)).astype(np.int32),
  }
  batch["inputs"][:, -3:] = cfg.eos_token_id  # an EOS, then padding that equals EOS
  batch["targets"][:, -1] = cfg.eos_token_id
  return cfg, params, batch


def loss_fn(cfg):
  return lambda p, b: objectives.loss_sums(
    p, b, jax.random.PRNGKey(0), cfg, 0.0, 0.0, True, "all" if (cfg.family == 'llama') else None
  )[0]


def optim_section(**kw):
  o = base_config().optim
  o.unlock()
  o.update(kw)
  return o


# ----------------------------------------------------------------------------------------------
# Mesh and rules
# ----------------------------------------------------------------------------------------------
def test_mesh_axes_and_their_errors():
  assert dict(sharding.make_mesh(-1, 1, 2).shape) == {"data": 4, "fsdp": 1, "model": 2}
  assert dict(sharding.make_mesh(1, -1, 2).shape) == {"data": 1, "fsdp": 4, "model": 2}
  assert dict(sharding.make_mesh(2, 2, 1).shape) == {"data": 2, "fsdp": 2, "model": 1}
  with pytest.raises(ValueError, match="only one of data / fsdp may be -1"):
    sharding.make_mesh(-1, -1, 1)
  with pytest.raises(ValueError, match="does not divide the 8 devices"):
    sharding.make_mesh(-1, 3, 1)
  with pytest.raises(ValueError, match="needs 16 devices, but only 8"):
    sharding.make_mesh(2, 4, 2)


def test_fsdp_goes_on_embed_or_the_largest_dimension_that_divides():
  mesh = sharding.make_mesh(1, 4, 2)
  spec = lambda axes, shape: sharding.logical_to_spec(axes, shape, mesh)
  assert spec(("embed", "heads", "kv"), (64, 4, 16)) == P("fsdp", "model", None)
  assert spec(("embed", "mlp"), (64, 160)) == P("fsdp", "model")
  assert spec(("vocab", "embed"), (512, 64)) == P("model", "fsdp")
  # no embed dimension: fsdp on the largest free one that divides (here 32 buckets)
  assert spec(("relpos_buckets", "heads"), (32, 4)) == P("fsdp", "model")
  # an embed that does not divide: the next largest that does
  assert spec(("embed", "mlp", "kv"), (30, 6, 8)) == P(None, "model", "fsdp")
  # nothing divides: replicated (KV heads G = 2 on model 2 still split)
  assert spec(("kv_heads", "kv"), (2, 3)) == P("model", None)
  assert spec(("heads",), (3,)) == P(None)


def test_a_config_overrides_the_sharding_rules():
  """mesh.param_rules / mesh.activation_rules replace single rules, as t5x's and MaxText's
  logical axis rules do; the rest stay the defaults."""
  mesh = sharding.make_mesh(1, 4, 2)
  spec = lambda axes, shape: sharding.logical_to_spec(axes, shape, mesh)
  c = base_config()
  c.mesh.param_rules = "mlp=none, vocab=fsdp+model"
  c.mesh.activation_rules = "batch=data"
  rules = preflight.sharding_rules(c)
  assert rules.params == {**sharding.PARAM_RULES, "mlp": None, "vocab": ("fsdp", "model")}
  assert rules.activations == {**sharding.ACTIVATION_RULES, "batch": "data"}
  with sharding.use_rules(rules):
    assert spec(("embed", "mlp"), (64, 160)) == P("fsdp", None)
    assert spec(("vocab", "embed"), (512, 64)) == P(("fsdp", "model"), None)
    assert spec(("embed", "heads", "kv"), (64, 4, 16)) == P("fsdp", "model", None)  # default
  assert spec(("embed", "mlp"), (64, 160)) == P("fsdp", "model")  # the defaults again
  for bad, message in [
    ("mlp", "is not LOGICAL=MESH_AXIS"),
    ("width=fsdp", "is not LOGICAL"),
    ("mlp=tensor", "is not a mesh axis"),
  ]:
    c.mesh.param_rules = bad
    with pytest.raises(UserError, match=message):
      preflight.sharding_rules(c)


def test_activation_constraints_split_the_batch_over_data_and_fsdp():
  from jax.sharding import NamedSharding

  mesh = sharding.make_mesh(2, 2, 2)

  def spec_of(x, axes):
    out = jax.jit(lambda x: sharding.constrain(x * 2, axes))(x)
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, out.sharding.spec), x.ndim)
    return tuple(out.sharding.spec) + (None,) * (x.ndim - len(out.sharding.spec))

  with jax.set_mesh(mesh):
    assert spec_of(jnp.ones((8, 3, 4)), ("batch", "length", "embed")) == (
      ("data", "fsdp"),
      None,
      None,
    )
    # a batch that does not split over both takes data alone, then nothing
    assert spec_of(jnp.ones((2, 4)), ("batch", "mlp")) == ("data", "model")
    assert spec_of(jnp.ones((3, 5)), ("batch", "mlp")) == (None, None)
  assert sharding.constrain(jnp.ones(3), ("batch",)).shape == (3,)  # no mesh: unchanged


# ----------------------------------------------------------------------------------------------
# Sharded optimizer state
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["tiny", "llama-tiny"])
def test_every_optimizer_moment_has_its_params_sharding(arch):
  cfg, params, _ = model_and_batch(arch)
  mesh = sharding.make_mesh(1, 4, 2)
  tx, _ = train_step.make_optimizer(base_config().optim, 100)
  shardings = train_step.state_shardings(cfg, tx, mesh)
  state = train_step.init_state(params, tx, shardings)
  adam = state["opt_state"][1][0]  # chain(clip, adamw): adamw = chain(scale_by_adam, ...)
  for moments in (adam.mu, adam.nu):
    for (path, m), p in zip(
      jax.tree_util.tree_leaves_with_path(moments), jax.tree.leaves(state["params"])
    ):
      assert m.sharding.is_equivalent_to(p.sharding, m.ndim), jax.tree_util.keystr(path)
      assert m.addressable_shards[0].data.shape == p.addressable_shards[0].data.shape
      # every kernel and table is split over fsdp (WGQA's H weights only over model)
      assert "fsdp" in str(p.sharding.spec) or p.ndim == 1, jax.tree_util.keystr(path)
  n = lambda tree: sum(
    s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards[:1]
  )
  # one device holds about 1/8 of params and moments (fsdp 4 x model 2)
  total = sum(x.nbytes for x in jax.tree.leaves(state["params"]))
  assert n(state["params"]) < total / 6 and n((adam.mu, adam.nu)) < 2 * total / 6
  assert adam.count.sharding.is_fully_replicated


# ----------------------------------------------------------------------------------------------
# FSDP meshes compute what one device computes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["tiny", "llama-tiny"])
def test_fsdp_meshes_give_one_devices_loss_grads_and_step(arch):
  cfg, params, batch = model_and_batch(arch)
  loss = loss_fn(cfg)
  want_loss, want_grads = jax.jit(jax.value_and_grad(loss))(params, batch)
  tx, _ = train_step.make_optimizer(base_config().optim, 100)
  one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  state1 = train_step.init_state(params, tx, train_step.state_shardings(cfg, tx, one))
  with jax.set_mesh(one):
    want_state, _ = train_step.compile_train_step(
      cfg, base_config().optim, tx, train_step.state_shardings(cfg, tx, one), one
    )(state1, batch, jax.random.PRNGKey(0))
  for shape in [(1, 8, 1), (2, 2, 2), (1, 4, 2)]:
    mesh = sharding.make_mesh(*shape)
    shardings = train_step.state_shardings(cfg, tx, mesh)
    placed = jax.device_put(params, shardings["params"])
    rows = sharding.put_process_batch(batch, mesh)
    with jax.set_mesh(mesh):
      got_loss, got_grads = jax.jit(
        jax.value_and_grad(loss), out_shardings=(None, shardings["params"])
      )(placed, rows)
      state = train_step.init_state(params, tx, shardings)
      new_state, _ = train_step.compile_train_step(cfg, base_config().optim, tx, shardings, mesh)(
        state, rows, jax.random.PRNGKey(0)
      )
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(jnp.abs(w).max()))
    # Adam's first step is lr * g / (|g| + eps): gradients near eps amplify rounding, so the
    # step is compared to 5% of one learning-rate step
    lr = base_config().optim.learning_rate
    for g, w in zip(jax.tree.leaves(new_state["params"]), jax.tree.leaves(want_state["params"])):
      np.testing.assert_allclose(g, w, rtol=0, atol=0.05 * lr)


def test_a_batch_that_does_not_split_over_the_mesh_is_refused_in_one_line():
  c = base_config()
  c.mesh.data, c.mesh.fsdp, c.optim.batch_size = 2, 4, 12
  with pytest.raises(
    ValueError,
    match=r"12 rows do not split over data x fsdp = 2 x 4 "
    r"devices: make the batch a multiple of 8",
  ):
    preflight.make_mesh(c)
  c.optim.batch_size, c.optim.grad_accum_steps = 16, 4
  with pytest.raises(ValueError, match="grad_accum_steps=4 = 4 rows"):
    preflight.make_mesh(c)


# ----------------------------------------------------------------------------------------------
# Remat and scanned layers: the same numbers, params in one layout
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["tiny", "llama-tiny"])
def test_remat_and_scanned_layers_give_the_same_loss_and_grads(arch):
  cfg, params, batch = model_and_batch(arch)
  want_loss, want_grads = jax.jit(jax.value_and_grad(loss_fn(cfg)))(params, batch)
  for remat in ("none", "full", "dots"):
    for scan in (False, True):
      if remat == "none" and not scan:
        continue
      c = cfg.replace(remat=remat, scan_layers=scan)
      loss, grads = jax.jit(jax.value_and_grad(loss_fn(c)))(params, batch)
      np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
      assert jax.tree.structure(grads) == jax.tree.structure(want_grads)  # per-layer layout
      for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(jnp.abs(w).max()))


def test_remat_policies_keep_less_for_the_backward_pass():
  """What the backward pass keeps, from XLA's memory analysis: full < dots < none."""
  cfg, params, batch = model_and_batch("llama-tiny", b=16)
  temp = {}
  for remat in ("none", "dots", "full"):
    c = cfg.replace(remat=remat, scan_layers=True, num_layers=4)
    p = models.family_of(c).init_params(c, jax.random.PRNGKey(0))
    f = jax.jit(jax.grad(loss_fn(c))).lower(p, batch).compile()
    temp[remat] = f.memory_analysis().temp_size_in_bytes
  assert temp["full"] < temp["dots"] < temp["none"], temp


def test_stacked_layers_round_trip_and_the_scanned_model_reads_them():
  cfg, params, _ = model_and_batch("tiny")
  stacked = layers.stack_layers(params)
  assert set(stacked["encoder"]) == {"layers", "relpos_bias", "final_norm"}
  assert stacked["decoder"]["layers"]["self_attention"]["wk"].shape == (2, 4)
  back = layers.unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # the scanned modules' own params have exactly the stacked layout
  from wgqa_jax.models import t5

  ids = jnp.ones((1, 4), jnp.int32)
  own = jax.eval_shape(
    lambda: t5.T5(cfg.replace(scan_layers=True)).init(jax.random.PRNGKey(0), ids, ids)
  )["params"]
  shape = lambda tree: jax.tree.map(jnp.shape, tree)
  assert shape(
    jax.tree.map(
      lambda x: x.value if hasattr(x, "value") else x, own, is_leaf=lambda x: hasattr(x, "value")
    )
  ) == shape(stacked)
