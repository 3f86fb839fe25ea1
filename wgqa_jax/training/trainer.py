"""Training: `train(config, workdir)` runs (or resumes) one uptraining, as one linear function
in banner sections (checks; data; model, mesh, sharded state; restore; compiled steps; loop;
final params), big_vision style. Its parts: preflight (what must hold before anything is
written), data_setup, model_setup (the model the run trains, which the planner compiles too),
steps (the state and the pure step functions), evaluation, loop_parts.

Re-running with the same workdir resumes from the newest checkpoint that verifies
(wgqa_jax.store.checkpoints); the data order and dropout keys are functions of the step, so the
resumed run repeats the uninterrupted one. A resumed run must keep every key that shapes the
model, the data or the schedule (training.config.RESUMABLE_CHANGES lists what may change).
SIGTERM/SIGINT (preemption) saves a checkpoint, then raises Preempted (exit 75); divergence
raises Diverged (exit 3); bad input a UserError (exit 2), before the workdir is written.

Workdir (wgqa_jax.core.workdir names its files): checkpoints/ (orbax: step, params, opt_state),
metrics.jsonl, tb/ (TensorBoard), config.json, best/ and final/ (params dirs:
python -m wgqa_jax.convert --params=...).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import jax
import ml_collections
from tqdm import tqdm

from wgqa_jax.core import sharding, workdir as workdir_lib
from wgqa_jax.core.errors import DamagedData, is_disk_full
from wgqa_jax.core.numerics import all_finite
from wgqa_jax.core.processes import is_main_process, say
from wgqa_jax.data import corpora, pipeline
from wgqa_jax.grouping import variants
from wgqa_jax.store import checkpoints, params_io
from wgqa_jax.store.resolve import resolve
from wgqa_jax.training import data_setup, evaluation, model_setup, preflight, steps
from wgqa_jax.training.loop_parts import (
  BestTracker,
  DataDamaged,
  Diverged,
  MetricWriter,
  Preempted,
  Preemption,
  SkipGuard,
  close_unless_disk_full,
  restore_or_init,
)
from wgqa_jax.training.validation import validate

__all__ = ["Diverged", "Preempted", "train"]


def train(
  c: ml_collections.ConfigDict,
  workdir: str,
  stop_after: int | None = None,
  extra_eval: Callable | None = None,
) -> dict:
  """Run (or resume) training; returns the last train and eval metrics. Usable from notebooks
  and tests. Raises Preempted (after saving) on SIGTERM / SIGINT, Diverged when the NaN guard
  gives up, UserError on bad input (before the workdir is touched).

  stop_after: behave as if preempted once that many steps are done (save, raise Preempted).
  extra_eval: (host params, model config, tokenizer) -> {"eval/NAME": value}, more metrics at
  every eval (the lab's lm-evaluation-harness tasks, wgqa_jax.lab.harness.scorer).
  One run writes a workdir at a time: a second one refuses (wgqa_jax.core.workdir.Lock).
  """
  validate(c)
  lock = workdir_lib.Lock(os.path.abspath(workdir))
  try:  # the sharding rules in force for every param placed and every step traced
    with Preemption() as preempted, sharding.use_rules(preflight.sharding_rules(c)):
      return _train(c, workdir, stop_after, lock, preempted, extra_eval)
  finally:
    lock.release()


def _train(
  c,
  workdir: str,
  stop_after: int | None,
  lock: workdir_lib.Lock,
  preempted: Preemption,
  extra_eval: Callable | None = None,
) -> dict:
  # ---- checks that can fail, before anything in the workdir is written ----
  variant = variants.get(c.grouping.variant)
  workdir = os.path.abspath(workdir)
  workdir_lib.refuse_links(workdir)
  preflight.check_resume(c, workdir)
  model_source = resolve(c.model.init_from, c.model.arch)  # a hub id: config.json alone
  preflight.check_model(c, model_source.cfg)
  for note in preflight.attention_notes(c, model_source.cfg, jax.default_backend()):
    say(note)
  mesh = preflight.make_mesh(c)
  train_source, eval_source = data_setup.open_sources(c)
  data_record = data_setup.data_record(c, train_source, eval_source)
  data_setup.check_data(workdir, data_record, checkpoints.has_checkpoints(workdir))
  tokenizer = data_setup.open_tokenizer(c, workdir)  # None until trained (sentencepiece), below
  model_source.open_weights()  # last: a download, once the checks passed; damage fails here
  if is_main_process():
    lock.acquire()  # creates the workdir
  os.makedirs(workdir, exist_ok=True)
  if is_main_process():  # whole, by a rename
    workdir_lib.write_text(
      os.path.join(workdir, workdir_lib.RUN_CONFIG), c.to_json_best_effort(indent=2)
    )
  data_setup.write_data_record(workdir, data_record)

  # ---- data ----
  tokenizer, eval_split, total_steps = data_setup.prepare_data(
    c, workdir, train_source, eval_source, tokenizer
  )
  data_setup.check_tokenizer(workdir, tokenizer, checkpoints.has_checkpoints(workdir))
  preempted.check_startup(workdir)

  # ---- model, sharded state ----
  params, cfg = model_setup.build_model(
    c,
    tokenizer,
    mesh,
    model_source,
    workdir=workdir,
    calibration_data=lambda: pipeline.TrainBatches(  # the run's first batches, from the start
      train_source, tokenizer, data_setup.layout_of(c), jax.process_index(), jax.process_count()
    ),
  )
  settings = model_source.generation_settings
  del model_source  # its memory-mapped files
  train_cfg = model_setup.for_training(cfg, c)
  tx, schedule = steps.make_optimizer(c.optim, total_steps)
  state_shard = steps.state_shardings(cfg, tx, mesh, c.optim.offload_state)
  state = steps.init_state(params, tx, state_shard)
  del params
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  source_kind = (
    "examples"
    if c.data.objective == "pairs"
    else f"documents of {corpora.describe(c.data.dataset)}"
  )
  say(
    f"model: {c.grouping.variant}: {cfg.grouping.describe(cfg.num_heads)}, "
    f"{n_params / 1e6:.2f}M params | mesh {dict(mesh.shape)} | {total_steps} steps of "
    f"{c.optim.batch_size} {data_setup.rows_kind(c)} from {len(train_source)} {source_kind} "
    f"| workdir {workdir}"
  )
  preempted.check_startup(workdir)  # the model is built: the last stop before files open

  # ---- checkpoints: resume from the newest good one, if any ----
  ckpts = checkpoints.Checkpoints(workdir, c.checkpoint.keep)
  state, saved_position = restore_or_init(ckpts, state, state_shard)
  start = int(state["step"])
  layout = data_setup.layout_of(c)
  position, warning = pipeline.resume_position(
    saved_position, start, layout, jax.process_index(), jax.process_count()
  )
  if warning:
    say(f"warning: {warning}")
  batches = pipeline.TrainBatches(
    train_source,
    tokenizer,
    layout,
    jax.process_index(),
    jax.process_count(),
    position,
    workers=c.data.workers,
  )

  # ---- compiled steps, writers ----
  train_step = steps.compile_train_step(train_cfg, c.optim, tx, state_shard, mesh)
  eval_step = steps.make_eval_step(train_cfg)
  writer = MetricWriter(workdir, start)
  guard = SkipGuard(c.optim.max_skipped_steps)
  best = BestTracker(workdir, evaluation.best_metric(c), settings)

  latest_eval: dict = {}

  def evaluate_and_log(step: int) -> dict:
    result, preds = evaluation.run_eval(
      state["params"], cfg, c, eval_split, tokenizer, mesh, eval_step
    )
    host_params = sharding.to_host(state["params"])  # every process: a collective on multi-host
    result.update(evaluation.wgqa_weight_stats(host_params))
    if extra_eval is not None:
      result.update(extra_eval(host_params, cfg, tokenizer))
    writer.write(step, result, objective=c.data.objective)
    say(
      f"eval @ {step} ({c.data.objective}): "
      + " ".join(f"{k}={v:.4g}" for k, v in result.items())
      + (f" | e.g. {preds[0][:70]!r}" if preds else "")
    )
    best.update(step, result, host_params, cfg)
    latest_eval.update(result)
    return result

  # ---- loop ----
  rng = jax.random.PRNGKey(c.seed)
  last: dict = {}
  t0, t0_step = time.time(), start
  bar = tqdm(
    range(start, total_steps),
    initial=start,
    total=total_steps,
    desc="train",
    disable=not is_main_process(),
    dynamic_ncols=True,
  )
  # (step, its "skipped" and "broken" flags), read one step late to keep the device busy
  previous = None
  padding = []  # padding fraction of each batch since the last log
  try:
    with jax.set_mesh(mesh):
      if c.eval.at_start and start == 0:
        evaluate_and_log(0)
      for step in bar:
        batch = next(batches)
        state, out = train_step(
          state, sharding.put_process_batch(batch, mesh), jax.random.fold_in(rng, step)
        )
        padding.append(pipeline.padding_fraction(batch, tokenizer.pad_id))
        done = step + 1
        if previous is not None:  # Diverged stops the run (below)
          guard.observe(previous[0], *sharding.to_host(previous[1]), ckpts)
        previous = (done, (out["skipped"], out["broken"]))
        if done == total_steps:
          guard.observe(done, *sharding.to_host(previous[1]), ckpts)
        if done % c.log_every == 0 or done == total_steps:
          out = sharding.to_host(out)
          dt, tokens = time.time() - t0, float(out["tokens"]) * (done - t0_step)
          last = {
            "train/loss": float(out["loss"]),
            "train/nll": float(out["nll"]),
            "train/grad_norm": float(out["grad_norm"]),
            "train/lr": float(schedule(step)),
            "train/skipped": float(out["skipped"]),
            "train/target_tokens_per_s": tokens / max(dt, 1e-9),
            "train/steps_per_s": (done - t0_step) / max(dt, 1e-9),
            "train/padding": sum(padding) / len(padding),
          }
          padding = []
          writer.write(done, last)
          ckpts.check()  # an asynchronous save that failed for lack of space stops the run now
          last["step"] = done
          bar.set_postfix(
            loss=f"{last['train/loss']:.3f}", tok_s=f"{last['train/target_tokens_per_s']:.0f}"
          )
          t0, t0_step = time.time(), done
        if (
          variant.regroups
          and c.grouping.regroup_every
          and done % c.grouping.regroup_every == 0
          and done != total_steps
        ):
          state = jax.device_put(variant.regroup(sharding.to_host(state), cfg), state_shard)
        if c.eval.every > 0 and done % c.eval.every == 0 and done != total_steps:
          evaluate_and_log(done)
        if stop_after is not None and done >= stop_after:
          preempted.signal = signal.SIGTERM
        if done % c.checkpoint.every == 0 or done == total_steps or preempted.signal:
          ckpts.save(done, state, data_setup.data_state(batches))
        if preempted.signal:
          stopped_at = done
          break
      else:
        stopped_at = total_steps  # a signal during the final eval: its checkpoint is saved
        if start < total_steps or total_steps not in writer.evals:
          evaluate_and_log(total_steps)
        else:  # a finished run, rerun (or killed after its last eval): that eval stands
          latest_eval.update(
            {k: v for k, v in writer.evals[total_steps].items() if k not in ("step", "objective")}
          )
        last["step"] = total_steps
  except Diverged:
    ckpts.close()  # pending saves finish; nothing more is written
    raise
  except DamagedData as e:  # read mid-run: stop as a full disk does, the saves kept
    ckpts.close()
    good = ckpts.last_good()
    raise DataDamaged(
      f"{e}. The run stopped after step {int(state['step'])}; its last good checkpoint is "
      f"{'step ' + str(good) if good is not None else 'none'}: once the data is whole, run the "
      f"same command to resume"
    ) from None
  except OSError as e:  # a full disk stops the run; what was saved stays good
    if not is_disk_full(e):
      raise
    raise ckpts.disk_full(e) from None
  else:  # finished or preempted: pending saves finish (a failed one raises DiskFull)
    ckpts.close()
  finally:  # whatever ended the loop
    for close in (writer.close, batches.close):
      close_unless_disk_full(close)
  last = {**latest_eval, **last}
  if preempted.signal:
    raise Preempted(
      f"signal {preempted.signal}: saved step {stopped_at} in "
      f"{workdir}; run the same command again to resume",
      last,
    )

  # ---- final params ----
  final_params = sharding.to_host(state["params"])
  if not bool(all_finite(final_params)):
    raise Diverged("the final params are not finite; final/ was not written")
  if is_main_process():
    params_io.save(final_params, cfg, os.path.join(workdir, workdir_lib.FINAL), settings)
    fold = (
      f" (fold WGQA: python -m wgqa_jax.convert --params={workdir}/final --fold "
      f"--out={workdir}/folded)"
      if cfg.grouping.weights != "none"
      else ""
    )
    say(f"done: {workdir}/final{fold}")
  return last
