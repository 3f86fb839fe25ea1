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
  """AdamW with linear warmup and linear decay to 0; global-norm clipping first."""
  warmup = min(optim.warmup_steps, total_steps)
  schedule = optax.join_schedules(
    [
      optax.linear_schedule(0.0, optim.learning_rate, max(warmup, 1)),
      optax.linear_schedule(optim.learning_rate, 0.0, max(total_steps - warmup, 1)),
    ],
    [warmup],
  )
  parts = [optax.clip_by_global_norm(optim.max_grad_norm)] if optim.max_grad_norm > 0 else []
  parts.append(optax.adamw(schedule, weight_decay=optim.weight_decay))
  return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------------------------
# The state and its shardings
# ----------------------------------------------------------------------------------------------
def param_shardings(cfg, mesh):
  family = family_of(cfg)
  return sharding.param_shardings(family.param_axes(cfg), family.param_shapes(cfg), mesh)


def state_shardings(cfg, tx, mesh) -> dict:
  """Shardings of {"step", "params", "opt_state"}: every param by its logical axes, and every
  optimizer leaf that mirrors a param (Adam's mu and nu) exactly as that param; counters
  replicated. (A jit left to choose would replicate the moments.)"""
  params = param_shardings(cfg, mesh)
  replicated = NamedSharding(mesh, P())
  opt_shapes = jax.eval_shape(tx.init, family_of(cfg).param_shapes(cfg))
  opt = optax.tree_map_params(
    tx, lambda _, s: s, opt_shapes, params, transform_non_params=lambda _: replicated
  )
  return {"step": replicated, "params": params, "opt_state": opt}


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
def make_train_step(cfg, optim: ml_collections.ConfigDict, tx, param_shardings=None):
  """step(state, batch, rng) -> (state, metrics); optim is the config's optim section.
  param_shardings: pin the gradients to them (reduce-scattered as the params are sharded, not
  all-reduced whole)."""
  accum = optim.grad_accum_steps
  pin = (
    (lambda g: g)
    if param_shardings is None
    else (lambda g: jax.lax.with_sharding_constraint(g, param_shardings))
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
    grads = jax.tree.map(lambda g: g / n, grads)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(lsum) & jnp.isfinite(grad_norm)

    def apply(_):
      updates, opt_state = tx.update(grads, state["opt_state"], params)
      return optax.apply_updates(params, updates), opt_state

    # NaN guard: a step whose loss, gradients or resulting params / optimizer state are not
    # finite leaves params and optimizer state untouched.
    keep = lambda _: (params, state["opt_state"])
    candidate = jax.lax.cond(ok, apply, keep, None)
    ok = ok & all_finite(candidate)
    new_params, opt_state = jax.lax.cond(ok, lambda _: candidate, keep, None)
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
    out = {
      "loss": lsum / n,
      "nll": nllsum / n,
      "tokens": n,
      "grad_norm": grad_norm,
      "skipped": 1.0 - ok.astype(jnp.float32),
    }
    return new_state, out

  return step_fn


def compile_train_step(cfg, optim, tx, shardings: dict, mesh):
  """The jitted train step over `mesh`: state donated, batch split over data x fsdp."""
  return jax.jit(
    make_train_step(cfg, optim, tx, shardings["params"]),
    donate_argnums=(0,),
    in_shardings=(shardings, sharding.batch_sharding(mesh), None),
    out_shardings=(shardings, None),
  )


def make_eval_step(cfg):
  """eval_step(params, batch) -> (sum of target tokens' NLLs, number of target tokens)."""

  def eval_step(params, batch):
    _, n, nll = objectives.loss_sums(
      params, batch, None, cfg, 0.0, 0.0, False, objectives.eval_loss_on(cfg)
    )
    return nll, n

  return jax.jit(eval_step)
