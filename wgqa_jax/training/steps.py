"""The train state on a mesh and the pure step functions: what the train loop runs and what the
planner (wgqa_jax.plan) compiles without data.

    tx, schedule = make_optimizer(c.optim, total_steps)
    shardings = state_shardings(cfg, tx, mesh)      # params by logical axes, moments likewise
    state = init_state(params, tx, shardings)       # host params -> sharded state
    step = compile_train_step(cfg, c.optim, tx, shardings, mesh)

The state is {"step", "params", "opt_state"}; params keep the per-layer layout (checkpoints,
hf.py and variants read it), and a config with scan_layers stacks them inside the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from wgqa_jax.core import sharding
from wgqa_jax.core.numerics import all_finite
from wgqa_jax.models import family_of
from wgqa_jax.training import objectives


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int):
  """optim.optimizer (AdamW, or Adafactor as T5X runs it: factored second moments, no momentum,
  updates scaled by each param's RMS) with linear warmup and linear decay to 0; global-norm
  clipping first. AdamW's first moment is float32 whatever the params' dtype."""
  warmup = min(optim.warmup_steps, total_steps)
  schedule = optax.join_schedules(
    [
      optax.linear_schedule(0.0, optim.learning_rate, max(warmup, 1)),
      optax.linear_schedule(optim.learning_rate, 0.0, max(total_steps - warmup, 1)),
    ],
    [warmup],
  )
  parts = [optax.clip_by_global_norm(optim.max_grad_norm)] if optim.max_grad_norm > 0 else []
  if optim.optimizer == "adafactor":
    # factored over each param's two largest dims of at least 32: T5X factors its 2-D (d, H*dk)
    # attention kernels at its threshold of 128; ours are (d, H, dk), whose dk=64 would miss it
    parts.append(
      optax.adafactor(
        schedule, min_dim_size_to_factor=32, weight_decay_rate=optim.weight_decay or None
      )
    )
  else:
    parts.append(optax.adamw(schedule, weight_decay=optim.weight_decay, mu_dtype=jnp.float32))
  return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------------------------
# The state and its shardings
# ----------------------------------------------------------------------------------------------
def param_shardings(cfg, mesh):
  family = family_of(cfg)
  return sharding.param_shardings(family.param_axes(cfg), family.param_shapes(cfg), mesh)


def state_shardings(cfg, tx, mesh, offload: bool = False) -> dict:
  """Shardings of {"step", "params", "opt_state"}: every param by its logical axes, and every
  optimizer leaf of its param's shape (Adam's moments, Adafactor's unfactored ones) exactly as
  that param; the rest (counters, Adafactor's row and column statistics: small) replicated. (A
  jit left to choose would replicate the moments.) offload: the optimizer state lives in host
  memory (memory_kind pinned_host, as MaxText offloads it); the step brings it in to update."""
  family = family_of(cfg)
  params = param_shardings(cfg, mesh)
  replicated = NamedSharding(mesh, P())
  shapes = family.param_shapes(cfg)
  placed = sharding.abstract(shapes, params)
  opt = optax.tree_map_params(
    tx,
    lambda leaf, p: p.sharding if leaf.shape == p.shape else replicated,
    jax.eval_shape(tx.init, shapes),
    placed,
    transform_non_params=lambda _: replicated,
  )
  if offload:
    opt = jax.tree.map(lambda s: s.with_memory_kind(HOST), opt)
  return {"step": replicated, "params": params, "opt_state": opt}


HOST = "pinned_host"  # where optim.offload_state keeps the optimizer state


def on_device(shardings):
  """The same shardings in device memory."""
  return jax.tree.map(lambda s: s.with_memory_kind("device"), shardings)


def abstract_state(cfg, tx, shardings: dict) -> dict:
  """ShapeDtypeStructs of the state, with their shardings: nothing allocated."""
  shapes = family_of(cfg).param_shapes(cfg)
  state = {
    "step": jax.ShapeDtypeStruct((), jnp.int32),
    "params": shapes,
    "opt_state": jax.eval_shape(tx.init, shapes),
  }
  return sharding.abstract(state, shardings)


def init_state(params, tx, shardings: dict) -> dict:
  """Params (host arrays, or global arrays already placed, which are consumed: donated to the
  state) -> the sharded state at step 0; the optimizer state is created in place, sharded like
  its params."""
  params = jax.tree.map(
    lambda x, s: x if isinstance(x, jax.Array) and x.sharding == s else jax.device_put(x, s),
    params,
    shardings["params"],
  )
  init = jax.jit(
    lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)},
    out_shardings=shardings,
    donate_argnums=(0,),
  )
  return init(params)


# ----------------------------------------------------------------------------------------------
# Steps (pure functions; the loop only moves data and writes metrics)
# ----------------------------------------------------------------------------------------------
def make_train_step(cfg, optim: ml_collections.ConfigDict, tx, shardings: dict | None = None):
  """step(state, batch, rng) -> (state, metrics); optim is the config's optim section.
  shardings (state_shardings'): pin the gradients to the params' (reduce-scattered as the params
  are sharded, not all-reduced whole), and bring an offloaded optimizer state into device memory
  for the update (the jit's out_shardings send it back)."""
  accum = optim.grad_accum_steps
  pin = (
    (lambda g: g)
    if shardings is None
    else (lambda g: jax.lax.with_sharding_constraint(g, shardings["params"]))
  )
  fetch = (
    (lambda o: o)
    if shardings is None or not optim.offload_state
    else (lambda o: jax.device_put(o, on_device(shardings["opt_state"])))
  )

  def grads_and_sums(params, mb, rng):
    def loss(p):
      lsum, n, nll = objectives.loss_sums(
        p, mb, rng, cfg, optim.label_smoothing, optim.z_loss, True, optim.loss_on
      )
      return lsum, (n, nll)

    (lsum, (n, nll)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return pin(grads), jnp.stack([lsum, n, nll])

  def step_fn(state, batch, rng):
    params = state["params"]
    if accum == 1:
      grads, sums = grads_and_sums(params, batch, rng)
    else:  # sum token-weighted grads over micro-batches: identical to the full batch

      def micro(carry, mb):
        g, sums = grads_and_sums(params, mb, jax.random.fold_in(rng, mb["i"]))
        return jax.tree.map(jnp.add, carry, (g, sums)), None

      mbs = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)
      mbs["i"] = jnp.arange(accum)
      zeros = (pin(jax.tree.map(jnp.zeros_like, params)), jnp.zeros(3))
      (grads, sums), _ = jax.lax.scan(micro, zeros, mbs)
    lsum, n, nllsum = sums[0], jnp.maximum(sums[1], 1.0), sums[2]
    grads = jax.tree.map(lambda g: (g / n).astype(g.dtype), grads)  # bf16 params: bf16 grads
    grad_norm = optax.global_norm(grads)
    # NaN guard: a step whose loss or gradients are not finite leaves params and optimizer
    # state untouched. Decided before the update (finite gradients give a finite AdamW or
    # Adafactor update: their squares are finite when their norm is), so the update is
    # computed once and each leaf selected in place: a lax.cond over whole trees held a second
    # copy of params and optimizer state. A non-finite result anyway (a non-finite optimizer
    # state, which only a non-finite update could leave) is reported ("broken": the loop stops
    # at once, the last good checkpoint intact). Gating on the state's finiteness as well made
    # the step's compile 3-5x slower.
    old_opt = fetch(state["opt_state"])
    ok = jnp.isfinite(lsum) & jnp.isfinite(grad_norm)
    updates, new_opt = tx.update(grads, old_opt, params)
    new_params = apply_updates(params, updates, jax.random.fold_in(rng, ROUNDING))
    select = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_params, opt_state = select(new_params, params), select(new_opt, old_opt)
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
    out = {
      "loss": lsum / n,
      "nll": nllsum / n,
      "tokens": n,
      "grad_norm": grad_norm,
      "skipped": 1.0 - ok.astype(jnp.float32),
      "broken": 1.0 - all_finite(new_state).astype(jnp.float32),
    }
    return new_state, out

  return step_fn


def compile_train_step(cfg, optim, tx, shardings: dict, mesh):
  """The jitted train step over `mesh`: state donated, batch split over data x fsdp."""
  return jax.jit(
    make_train_step(cfg, optim, tx, shardings),
    donate_argnums=(0,),
    in_shardings=(shardings, sharding.batch_sharding(mesh), None),
    out_shardings=(shardings, None),
  )


ROUNDING = 0x5EED  # folded into the step's rng for the stochastic rounding of bf16 params


def apply_updates(params, updates, key):
  """params + updates, in float32; a bfloat16 param is rounded back stochastically (up or down
  with the odds of its distance to each), so an update far below the param's precision (lr 2e-5
  on a weight of 0.02) still moves it on average instead of rounding away to nothing: bf16
  params without a float32 master copy (Zamirai et al. 2020, "Revisiting BFloat16 Training")."""
  leaves, tree = jax.tree.flatten(params)
  seeds = jax.random.bits(key, (len(leaves),), jnp.uint32)
  out = [
    stochastic_round(p.astype(jnp.float32) + u.astype(jnp.float32), seeds[i])
    if p.dtype == jnp.bfloat16
    else (p + u).astype(p.dtype)
    for i, (p, u) in enumerate(zip(leaves, tree.flatten_up_to(updates), strict=True))
  ]
  return tree.unflatten(out)


def stochastic_round(x, seed):
  """float32 -> bfloat16, rounded up with probability (distance to the lower neighbour) / ulp:
  16 random low bits added to the float32 bits, then truncated. Exact values stay exact."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  rounded = (bits + (uniform_bits(x.shape, seed) >> 16)) & jnp.uint32(0xFFFF0000)
  return jax.lax.bitcast_convert_type(rounded, jnp.float32).astype(jnp.bfloat16)


def uniform_bits(shape, seed):
  """A uint32 per element: a hash (lowbias32) of its flat index and `seed`, elementwise, so XLA
  fuses it into the update. (jax.random.bits held a uint32 array of each param's size and its
  generator's temporaries: 2.6 GiB more per 2 Llama-2-7B layers in the planner.)"""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  x = index ^ (seed * jnp.uint32(0x9E3779B9))
  x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
  x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def make_eval_step(cfg):
  """eval_step(params, batch) -> (sum of target tokens' NLLs, number of target tokens)."""

  def eval_step(params, batch):
    _, n, nll = objectives.loss_sums(
      params, batch, None, cfg, 0.0, 0.0, False, objectives.eval_loss_on(cfg)
    )
    return nll, n

  return jax.jit(eval_step)
