"""Uptrain a T5 checkpoint into MHA / MQA / GQA / WGQA (one linear main, big_vision style).

    python -m wgqa_jax.train --config=configs/tiny.py --workdir=/tmp/wgqa_tiny
    python -m wgqa_jax.train --config=configs/wgqa_small.py --config.batch_size=64 --workdir=...

Re-running the same command with the same workdir resumes from the latest checkpoint; the data
order and dropout keys are functions of the step, so the resumed run repeats the uninterrupted
one. SIGTERM/SIGINT (preemption) saves a checkpoint before exiting.

Workdir: checkpoints/ (orbax: step, params, opt_state), metrics.jsonl, tb/ (TensorBoard), config.json,
best/ and final/ (wgqa_jax params dirs: python -m wgqa_jax.convert --params=... --fold ...).
"""
from __future__ import annotations

import functools
import json
import os
import signal
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from wgqa_jax import analysis, convert, data, grouping, metrics, model, sharding
from wgqa_jax import evaluate as evaluate_lib
from wgqa_jax.config import preset
from wgqa_jax.train_config import validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go")


# ----------------------------------------------------------------------------------------------
# Model: from a random tiny T5, a HF checkpoint, or our params dir -> (params on host, cfg)
# ----------------------------------------------------------------------------------------------
def build_model(c: ml_collections.ConfigDict, vocab_size: int):
  group_kw = dict(group_encoder=c.group_encoder, seed=c.seed,
                  group_sizes=[int(x) for x in c.group_sizes.split(",")] if c.group_sizes else None,
                  attention_noise=c.attention_noise if c.variant == "pgqa" else None)
  if c.init_from == "tiny-random":
    cfg = preset(c.arch, vocab_size=max(vocab_size, preset(c.arch).vocab_size))
    params = jax.device_get(model.init_params(cfg, jax.random.PRNGKey(c.seed)))
    params, cfg = convert.group(params, cfg, c.variant, c.kv_heads, **group_kw)
  elif os.path.exists(os.path.join(c.init_from, convert.CONFIG_FILE)):
    params, cfg = convert.load(c.init_from)
    if cfg.kv_heads == cfg.num_heads and cfg.wgqa == "none" and c.variant != "mha":
      params, cfg = convert.group(params, cfg, c.variant, c.kv_heads, **group_kw)
  else:
    params, cfg = convert.from_hf(c.init_from, c.variant, c.kv_heads, **group_kw)
  if vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer {c.tokenizer!r} has {vocab_size} ids but the model only "
                     f"{cfg.vocab_size} embeddings")
  changes = dict(dtype=c.dtype)
  if c.dropout_rate >= 0:
    changes["dropout_rate"] = c.dropout_rate
  return params, cfg.replace(**changes)


# ----------------------------------------------------------------------------------------------
# Loss and steps
# ----------------------------------------------------------------------------------------------
def loss_sums(params, batch, rng, cfg, label_smoothing: float, z_loss: float, train: bool):
  """(sum of token losses, number of target tokens, sum of log-likelihood-only losses)."""
  targets = batch["targets"]
  inputs = batch["inputs"]
  dec_in = model.shift_right(targets, cfg.decoder_start_token_id, cfg.pad_token_id)
  logits = model.T5(cfg).apply(
      {"params": params}, inputs, dec_in, (inputs != cfg.pad_token_id).astype(jnp.int32),
      deterministic=not train, rngs={"dropout": rng} if train else None)
  weights = (targets != cfg.pad_token_id).astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  logp = logits - logz[..., None]
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  loss = nll
  if label_smoothing > 0:
    loss = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
  if z_loss > 0:
    loss = loss + z_loss * logz ** 2
  return (loss * weights).sum(), weights.sum(), (nll * weights).sum()


def make_train_step(cfg, c, tx):
  accum = c.grad_accum_steps

  def grads_and_sums(params, mb, rng):
    def loss(p):
      lsum, n, nll = loss_sums(p, mb, rng, cfg, c.label_smoothing, c.z_loss, True)
      return lsum, (n, nll)
    (lsum, (n, nll)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return grads, jnp.stack([lsum, n, nll])

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
      zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros(3))
      (grads, sums), _ = jax.lax.scan(micro, zeros, mbs)
    lsum, n, nllsum = sums[0], jnp.maximum(sums[1], 1.0), sums[2]
    grads = jax.tree.map(lambda g: g / n, grads)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(lsum) & jnp.isfinite(grad_norm)

    def apply(_):
      updates, opt_state = tx.update(grads, state["opt_state"], params)
      return optax.apply_updates(params, updates), opt_state

    # NaN guard: a non-finite step leaves params and optimizer state untouched.
    new_params, opt_state = jax.lax.cond(ok, apply, lambda _: (params, state["opt_state"]), None)
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
    out = {"loss": lsum / n, "nll": nllsum / n, "tokens": n, "grad_norm": grad_norm,
           "skipped": 1.0 - ok.astype(jnp.float32)}
    return new_state, out

  return step_fn


def make_optimizer(c, total_steps: int):
  warmup = min(c.warmup_steps, total_steps)
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, c.learning_rate, max(warmup, 1)),
       optax.linear_schedule(c.learning_rate, 0.0, max(total_steps - warmup, 1))], [warmup])
  parts = [optax.clip_by_global_norm(c.max_grad_norm)] if c.max_grad_norm > 0 else []
  parts.append(optax.adamw(schedule, weight_decay=c.weight_decay))
  return optax.chain(*parts), schedule


def regroup_query_heads(state, cfg):
  """SimGQA at intervals: move query heads between the (already pooled) KV groups so that each
  group holds mutually similar queries. q and o (and their optimizer moments) are permuted;
  each similarity group goes to the KV head most of its members already use."""
  host = sharding.to_host(state)
  size = cfg.num_heads // cfg.kv_heads
  perms = {}
  for stack, layer, module in convert.grouped_modules(cfg):
    groups = grouping.similarity_groups(host["params"][stack][layer][module]["q"], cfg.kv_heads)
    slots, order = list(range(cfg.kv_heads)), [None] * cfg.kv_heads
    for grp in sorted(groups, key=lambda g_: -max(np.bincount(np.array(g_) // size))):
      votes = np.bincount(np.array(grp) // size, minlength=cfg.kv_heads)
      slot = max(slots, key=lambda j: (votes[j], -j))
      slots.remove(slot)
      order[slot] = grp
    perms[(stack, layer, module)] = np.array([h for grp in order for h in grp])

  def visit(path, leaf):
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    perm = perms.get(tuple(keys[-4:-1])) if len(keys) >= 4 else None
    if perm is None or keys[-1] not in ("q", "o") or np.ndim(leaf) != 3:
      return leaf
    return np.take(leaf, perm, axis=1 if keys[-1] == "q" else 0)

  return jax.tree_util.tree_map_with_path(visit, host)


def wgqa_weight_stats(params) -> dict[str, float]:
  ws = analysis.wgqa_weights(params)
  if not len(ws):
    return {}
  return {"wgqa/mean": float(ws.mean()), "wgqa/std": float(ws.std()),
          "wgqa/min": float(ws.min()), "wgqa/max": float(ws.max())}


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def evaluate(state, cfg, c, split, tokenizer, mesh, eval_loss_fn, max_decode: int):
  sums = [0.0, 0.0]

  def add_loss(batch):
    l, k = eval_loss_fn(state["params"], batch)
    sums[0], sums[1] = sums[0] + float(l), sums[1] + float(k)
  preds = evaluate_lib.predict(state["params"], cfg, split, tokenizer, c.eval_batch_size,
                               max_decode, put=lambda b: sharding.put_batch(b, mesh),
                               on_batch=add_loss)
  lsum, n = sums
  refs = [t for _, t in split.texts]
  result = {"eval/loss": lsum / max(n, 1.0)}
  score = metrics.bleu if data.is_translation(c.dataset) else metrics.rouge
  scores = score(preds, refs)
  result.update({f"eval/{k}": v for k, v in scores.items()})
  return result, preds


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def first_on_process_0(fn):
  """fn() on process 0, then on the others (which find what process 0 wrote to the workdir)."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils
  out = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("wgqa_jax: process 0 done")
  return out if jax.process_index() == 0 else fn()


def say(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(msg)


def train(c: ml_collections.ConfigDict, workdir: str, stop_after: int | None = None) -> dict:
  """Run (or resume) training; returns the last metrics. Usable from notebooks and tests.

  stop_after: behave as if preempted once that many steps are done (save, return).
  """
  validate(c)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(c.to_json_best_effort(indent=2))

  # ---- data ----
  n_train = None if c.train_examples < 0 else c.train_examples
  train_pairs = data.load_examples(c.dataset, "train", n_train, c.seed, c.data_dir or None)
  tokenizer = first_on_process_0(lambda: data.get_tokenizer(
      c.tokenizer, workdir, (t for pair in train_pairs for t in pair),
      vocab_size=preset(c.arch).vocab_size))  # trained once, into the shared workdir
  train_split = data.tokenize(train_pairs, tokenizer, c.max_input_length, c.max_target_length)
  eval_split = data.tokenize(
      data.load_examples(c.dataset, "validation", c.eval_examples, c.seed, c.data_dir or None),
      tokenizer, c.max_input_length, c.max_target_length)
  per_epoch = data.steps_per_epoch(len(train_split), c.batch_size)
  total_steps = c.num_train_steps if c.num_train_steps > 0 else int(c.num_epochs * per_epoch)

  # ---- model, mesh, sharded state ----
  params, cfg = build_model(c, tokenizer.vocab_size)
  mesh = sharding.make_mesh(c.mesh_data, c.mesh_model)
  if c.batch_size % mesh.shape["data"]:
    raise ValueError(f"batch_size={c.batch_size} is not divisible by the data axis "
                     f"({mesh.shape['data']} devices)")
  p_shard = sharding.param_shardings(model.param_axes(cfg), model.param_shapes(cfg), mesh)
  tx, schedule = make_optimizer(c, total_steps)
  params = jax.device_put(jax.tree.map(jnp.asarray, params), p_shard)
  init_state = jax.jit(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p,
                                  "opt_state": tx.init(p)})
  state = init_state(params)
  del params
  state_shard = jax.tree.map(lambda x: x.sharding, state)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  say(f"model: {cfg.num_heads} heads, {cfg.kv_heads} KV heads, wgqa={cfg.wgqa}, "
      f"{n_params / 1e6:.2f}M params | mesh {dict(mesh.shape)} | {total_steps} steps "
      f"({per_epoch}/epoch) | workdir {workdir}")

  # ---- checkpoints: resume if any ----
  mngr = ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=c.keep_checkpoints, create=True,
                                           enable_async_checkpointing=True))
  if mngr.latest_step() is not None:
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, state_shard)
    state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abstract))
    say(f"resumed from step {int(state['step'])}")
  start = int(state["step"])

  # ---- compiled steps ----
  batch_shard = sharding.batch_sharding(mesh)
  train_step = jax.jit(make_train_step(cfg, c, tx), donate_argnums=(0,),
                       in_shardings=(state_shard, batch_shard, None),
                       out_shardings=(state_shard, None))
  eval_loss_fn = jax.jit(lambda p, b: loss_sums(p, b, None, cfg, 0.0, 0.0, False)[1:3][::-1])
  max_decode = c.max_target_length if c.eval_max_decode_length < 0 else c.eval_max_decode_length

  # ---- preemption: save and exit cleanly ----
  stop = {"signal": None}
  def on_signal(signum, _):
    stop["signal"] = signum
  old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  tb = None
  if jax.process_index() == 0:
    from tensorboardX import SummaryWriter
    tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(record):
    if jax.process_index() == 0:
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
      for k, v in record.items():
        if k != "step":
          tb.add_scalar(k, v, record["step"])
      tb.flush()

  best = -float("inf")
  best_path = os.path.join(workdir, "best_metric.json")
  if os.path.exists(best_path):
    best = json.load(open(best_path))["value"]

  def run_eval(step):
    nonlocal best
    result, preds = evaluate(state, cfg, c, eval_split, tokenizer, mesh, eval_loss_fn, max_decode)
    host_params = sharding.to_host(state["params"])  # every process: a collective on multi-host
    result.update(wgqa_weight_stats(host_params))
    result["step"] = step
    write(result)
    say(f"eval @ {step}: " + " ".join(f"{k}={v:.4g}" for k, v in result.items() if k != "step")
        + (f" | e.g. {preds[0][:70]!r}" if preds else ""))
    value = result.get(f"eval/{c.best_metric}")
    if value is not None and value > best and jax.process_index() == 0:
      best = value
      convert.save(host_params, cfg, os.path.join(workdir, "best"))
      json.dump({"step": step, "metric": c.best_metric, "value": value}, open(best_path, "w"))
    return result

  # ---- loop ----
  rng = jax.random.PRNGKey(c.seed)
  last: dict = {}
  t0, t0_step = time.time(), start
  bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc="train",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  with jax.set_mesh(mesh):
    if c.eval_at_start and start == 0:
      run_eval(0)
    for step in bar:
      batch = data.train_batch(train_split, c.batch_size, step, c.seed)
      state, out = train_step(state, sharding.put_batch(batch, mesh),
                              jax.random.fold_in(rng, step))
      done = step + 1
      if done % c.log_every == 0 or done == total_steps:
        out = sharding.to_host(out)
        tokens = float(out["tokens"]) * (done - t0_step)  # target tokens since the last log
        dt = time.time() - t0
        last = {"step": done, "train/loss": float(out["loss"]), "train/nll": float(out["nll"]),
                "train/grad_norm": float(out["grad_norm"]), "train/lr": float(schedule(step)),
                "train/skipped": float(out["skipped"]),
                "train/target_tokens_per_s": tokens / max(dt, 1e-9)}
        write(last)
        bar.set_postfix(loss=f"{last['train/loss']:.3f}",
                        tok_s=f"{last['train/target_tokens_per_s']:.0f}")
        t0, t0_step = time.time(), done
      if c.regroup_every > 0 and done % c.regroup_every == 0 and done != total_steps:
        state = jax.device_put(regroup_query_heads(state, cfg), state_shard)
      if c.eval_every > 0 and done % c.eval_every == 0 and done != total_steps:
        run_eval(done)
      if stop_after is not None and done >= stop_after:
        stop["signal"] = signal.SIGTERM
      if done % c.checkpoint_every == 0 or done == total_steps or stop["signal"]:
        mngr.save(done, args=ocp.args.StandardSave(state))
      if stop["signal"]:
        say(f"signal {stop['signal']}: saved step {done}, exiting")
        break
    else:
      if start < total_steps or not last:
        last.update(run_eval(total_steps))
  mngr.wait_until_finished()
  mngr.close()
  for s, h in old_handlers.items():
    signal.signal(s, h)
  if tb is not None:
    tb.close()
  final_params = None if stop["signal"] else sharding.to_host(state["params"])
  if final_params is not None and jax.process_index() == 0:
    convert.save(final_params, cfg, os.path.join(workdir, "final"))
    say(f"done: {workdir}/final (fold WGQA: python -m wgqa_jax.convert "
        f"--params={workdir}/final --fold --out={workdir}/folded)")
  return last


def initialize_distributed() -> None:
  """Join a multi-host run when the environment describes one (launch/multihost.sh sets the
  JAX_* variables; SLURM is auto-detected); a single-host run does nothing."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("pass --config=configs/NAME.py")
  workdir = _WORKDIR.value or os.path.join("workdirs", os.path.splitext(
      os.path.basename(flags.FLAGS["config"].config_filename))[0])
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO; our progress is printed
  initialize_distributed()
  train(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main)
