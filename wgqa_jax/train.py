"""Uptrain a T5 or Llama-architecture checkpoint into MHA / MQA / GQA / WGQA / ... (one linear
main, big_vision style).

    python -m wgqa_jax.train --config=configs/tiny.py --workdir=/tmp/wgqa_tiny
    python -m wgqa_jax.train --config=configs/llama_tiny.py --workdir=/tmp/wgqa_llama_tiny
    python -m wgqa_jax.train --config=configs/paper.py:wgqa,small --config.optim.batch_size=64 \
        --workdir=/tmp/wgqa_small

Re-running the same command with the same workdir resumes from the newest checkpoint that
verifies (wgqa_jax.checkpoints); the data order and dropout keys are functions of the step, so the
resumed run repeats the uninterrupted one. A resumed run must keep every key that shapes the
model, the data or the schedule (train_config.RESUMABLE_CHANGES lists what may change).
SIGTERM/SIGINT (preemption) saves a checkpoint, then exits 75; divergence exits 3; user errors 2.
Every check that can fail runs before anything in the workdir is written.

Workdir: checkpoints/ (orbax: step, params, opt_state), metrics.jsonl, tb/ (TensorBoard),
config.json, best/ and final/ (wgqa_jax params dirs: python -m wgqa_jax.convert --params=...).
"""
from __future__ import annotations

import json
import os
import signal
import time

# `python -m wgqa_jax.train`: a preemption (SIGTERM / SIGINT) is caught from the first moment,
# before the heavy imports below; the run then stops cleanly with exit 75 (Preemption).
_PENDING_SIGNALS: list[int] = []
if __name__ == "__main__":
  for _s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_s, lambda signum, _: _PENDING_SIGNALS.append(signum))

from absl import flags, logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np
from tqdm import tqdm

from wgqa_jax import (calibration, checkpoints, cli, corpora, data, decoding, kv_budget, metrics,
                      models, params_io, pipeline, sharding, span_corruption, streaming,
                      text_rows, tokenizers, train_step as step_lib, variants,
                      workdir as workdir_lib)
from wgqa_jax.model_source import RANDOM, ModelSource, open_source
from wgqa_jax.train_config import resume_differences, validate

FLAGS = cli.flag_set()
_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file",
                                          lock_config=True, flag_values=FLAGS)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go "
                               "(default: workdirs/<config name>)", flag_values=FLAGS)


# ----------------------------------------------------------------------------------------------
# Model: from a random tiny preset, a HF checkpoint, or our params dir -> (params on host, cfg)
# ----------------------------------------------------------------------------------------------
class Diverged(cli.Failure):
  """Too many consecutive steps were non-finite; the last good checkpoint is left as it was."""
  exit_code = cli.EXIT_DIVERGED


class Preempted(cli.Failure):
  """SIGTERM / SIGINT (or stop_after) stopped the run after it saved a checkpoint; running the
  same command again resumes. `metrics`: the last train and eval metrics, as train() returns."""
  exit_code = cli.EXIT_PREEMPTED
  label = "preempted"

  def __init__(self, message: str, metrics: dict):
    super().__init__(message)
    self.metrics = metrics


def with_run_numerics(cfg, c: ml_collections.ConfigDict):
  """cfg with the run's compute dtype and, when set, dropout (what best/ and final/ keep)."""
  changes = dict(dtype=c.model.dtype)
  if c.model.dropout_rate is not None:
    changes["dropout_rate"] = c.model.dropout_rate
  return cfg.replace(**changes)


def for_training(cfg, c: ml_collections.ConfigDict):
  """cfg with the training-only layer options (remat, scanned layers) the step compiles with."""
  return cfg.replace(remat=c.model.remat, scan_layers=c.model.scan_layers)


def check_model(c: ml_collections.ConfigDict, src) -> None:
  """Fail now (nothing written yet) if the variant or the objective does not fit the model
  (src: the model config of model.init_from)."""
  g = c.grouping
  if c.optim.loss_on is not None and not models.is_causal(src):
    raise ValueError(f"config.optim.loss_on={c.optim.loss_on!r}: T5 always trains on its "
                     f"targets; loss_on is for decoder-only models")
  objective = c.data.objective
  causal = text_rows.FOR_CAUSAL_MODELS.get(objective)
  if causal is not None and causal != models.is_causal(src):
    family = "decoder-only" if models.is_causal(src) else "T5 (encoder-decoder)"
    right = "causal_lm" if models.is_causal(src) else "span_corruption"
    model = c.model.arch if c.model.init_from == RANDOM else c.model.init_from
    raise ValueError(f"config.data.objective={objective!r} does not fit {model} ({family}): "
                     f"use data.objective={right} (or pairs)")
  if variants.is_mha(src):
    variants.get(g.variant).grouping(src.num_heads, g.kv_heads, **variants.options(g))


def check_resume(c: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir with checkpoints resumes only under the config it was started with (up to the
  keys train_config.RESUMABLE_CHANGES lists): one line per differing key, else nothing."""
  saved = os.path.join(workdir, "config.json")
  if not os.path.exists(saved) or not checkpoints.has_checkpoints(workdir):
    return
  with open(saved) as f:
    diffs = resume_differences(json.load(f), c)
  if diffs:
    raise ValueError(f"{workdir} holds a run started with another config, and resuming it must "
                     f"keep: {'; '.join(diffs)}. To start fresh, pass another --workdir.")


def build_model(c: ml_collections.ConfigDict, tokenizer, mesh, source: ModelSource,
                calibration_data=None, workdir: str | None = None):
  """(params placed on `mesh` as the state shards them, model config): a random init or a
  checkpoint read tensor by tensor (wgqa_jax.streaming), converted to the variant one attention
  module at a time, never whole in host memory. A calibrated variant first runs the MHA model
  on `calibration_data()` (an iterator of this process's training rows; see calibrate)."""
  m, g = c.model, c.grouping
  vocab_size = tokenizer.vocab_size
  if source.is_random:
    arch = source.cfg
    ids = dict(pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
               bos_token_id=(tokenizer.prefix or (tokenizer.eos_id,))[0]) \
        if models.is_causal(arch) else {}  # a random decoder-only model takes the data's ids
    cfg = arch.replace(vocab_size=max(vocab_size, arch.vocab_size), **ids)
    reader = streaming.MemorySource(
        jax.device_get(models.module_of(cfg).init_params(cfg, jax.random.PRNGKey(c.seed))), cfg)
  else:
    reader = source.open_weights()
    cfg = source.cfg
  if vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer {c.data.tokenizer!r} has {vocab_size} ids but the model only "
                     f"{cfg.vocab_size} embeddings")
  if models.is_causal(cfg) and tokenizer.eos_id != cfg.eos_token_id:
    raise ValueError(f"tokenizer {c.data.tokenizer!r} ends examples with id {tokenizer.eos_id} "
                     f"but the model's eos_token_id is {cfg.eos_token_id}: train with the "
                     f"checkpoint's own tokenizer (config.data.tokenizer="
                     f"{source.tokenizer or m.init_from})")
  convert = None
  if variants.is_mha(cfg):  # a grouped params dir is uptrained as it is
    stats, module_kv_heads = None, None
    if variants.get(g.variant).calibrated:
      stats = calibrate(c, reader, cfg, mesh, calibration_data, workdir)
    if g.layer_budget == "proxy":  # the same KV heads in all, spread by calibration error
      module_kv_heads = kv_budget.by_proxy(reader.read, cfg, stats, g.variant, g.kv_heads)
      say(f"KV heads per module: {','.join(map(str, module_kv_heads.values()))} "
          f"({sum(module_kv_heads.values())} in all, as {g.kv_heads} in each)")
    cfg, convert = variants.converter(cfg, g.variant, g.kv_heads, **variants.options(g),
                                      seed=c.seed, calibration=stats,
                                      module_kv_heads=module_kv_heads)
  cfg = with_run_numerics(cfg, c)
  params = streaming.load_sharded(reader, cfg, step_lib.param_shardings(cfg, mesh), convert,
                                  desc=None if source.is_random else f"loading {m.init_from}")
  return params, cfg


def calibration_config(cfg, c: ml_collections.ConfigDict):
  """The MHA model as calibration runs it: the run's numerics, its layers scanned when the
  run's are (no remat: there is no backward pass)."""
  return with_run_numerics(cfg, c).replace(scan_layers=c.model.scan_layers, remat="none")


def calibrate(c: ml_collections.ConfigDict, reader, cfg, mesh, calibration_data,
              workdir: str) -> calibration.Statistics:
  """The MHA model's calibration statistics over the first grouping.calibration_batches
  training batches, kept in WORKDIR/calibration.npz: a resumed run reads them back, so its
  conversion is the one the run started from."""
  path = os.path.join(workdir, calibration.FILE)
  # what the statistics were computed from: a file left by a run of other data or another
  # model (one that stopped before its first checkpoint, so check_resume had nothing to compare)
  # is computed afresh, never reused
  source = json.dumps({"init_from": c.model.init_from, "seed": c.seed, "data": c.data.to_dict(),
                       "batch_size": c.optim.batch_size, "dtype": c.model.dtype,
                       "batches": c.grouping.calibration_batches}, sort_keys=True)
  if os.path.exists(path):
    stats = calibration.load(path, cfg)
    if stats.source == source:
      return stats
    say(f"calibration: {path} was computed for another model or data; computing it afresh")
  run_cfg = calibration_config(cfg, c)
  params = streaming.load_sharded(reader, run_cfg, step_lib.param_shardings(run_cfg, mesh),
                                  desc="calibration: loading the MHA model")
  rows = calibration_data()
  try:
    placed = (sharding.put_process_batch(batch, mesh) for batch in rows)
    with jax.set_mesh(mesh):  # activations sharded as in training (what wgqa_jax.plan sizes)
      stats = calibration.collect(params, run_cfg, placed, c.grouping.calibration_batches)
  finally:
    rows.close()
  del params
  stats.source = source
  if is_main_process():
    calibration.save(path, stats)
  n = next(iter(stats.tokens.values()))
  say(f"calibration: {stats.batches} batches, {n} tokens per module -> {path}")
  return stats


def wgqa_weight_stats(params) -> dict[str, float]:
  ws = variants.weights_flat(params)
  if not len(ws):
    return {}
  return {"wgqa/mean": float(ws.mean()), "wgqa/std": float(ws.std()),
          "wgqa/min": float(ws.min()), "wgqa/max": float(ws.max())}


# ----------------------------------------------------------------------------------------------
# Small named helpers of the loop
# ----------------------------------------------------------------------------------------------
def is_main_process() -> bool:
  return jax.process_index() == 0


def say(msg: str) -> None:
  if is_main_process():
    tqdm.write(msg)


def first_on_process_0(fn):
  """fn() on process 0, then on the others (which find what process 0 wrote to the workdir)."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils
  out = fn() if is_main_process() else None
  multihost_utils.sync_global_devices("wgqa_jax: process 0 done")
  return out if is_main_process() else fn()


class MetricWriter:
  """metrics.jsonl + TensorBoard scalars, written by process 0. Rows past `start` (written
  before a kill, replayed by the resumed run) are dropped, so each step appears once."""

  def __init__(self, workdir: str, start: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    # step -> its eval row, on every process (a finished run is not evaluated again: all
    # processes must agree, the eval is a collective)
    rows = (workdir_lib.read_jsonl(self.path) if os.path.exists(self.path) else [])
    rows = [r for r in rows if r["step"] <= start]
    self.evals = {r["step"]: r for r in rows if "eval/loss" in r}
    if is_main_process():
      if os.path.exists(self.path):
        with open(self.path + ".tmp", "w") as f:
          f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(self.path + ".tmp", self.path)
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, scalars: dict[str, float], objective: str | None = None) -> None:
    """objective: named in the JSONL row (eval rows: what the loss is of)."""
    if self.tb is None:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **({"objective": objective} if objective else {}),
                          **scalars}) + "\n")
    for k, v in scalars.items():
      self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


class BestTracker:
  """Keeps best/ (a params dir) at the best value of one eval metric; survives restarts."""

  def __init__(self, workdir: str, metric: str, generation_settings: dict):
    self.dir, self.metric = os.path.join(workdir, "best"), metric
    self.generation_settings = generation_settings
    self.record = os.path.join(workdir, "best_metric.json")
    # stored and compared as "higher is better": a loss is kept negated
    self.sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    self.value = -float("inf")
    record = workdir_lib.read_json(self.record)
    if record is not None:
      self.value = self.sign * record["value"]

  def update(self, step: int, result: dict, params, cfg) -> None:
    value = result.get(f"eval/{self.metric}")
    if value is None or self.sign * value <= self.value or not is_main_process():
      return
    if not bool(checkpoints.all_finite(params)):  # unreachable behind the NaN guard; never
      say(f"warning: params at step {step} are not finite; best/ left as it was")
      return
    self.value = self.sign * value
    params_io.save(params, cfg, self.dir, self.generation_settings)
    workdir_lib.write_json(self.record, {"step": step, "metric": self.metric, "value": value})


class Preemption:
  """SIGTERM/SIGINT set a flag (the loop saves, then stops) instead of killing the process.
  Installed for the whole run: a signal during start-up stops it at the next check, before
  any step (nothing to save: the rerun starts where this one would have)."""

  def __init__(self):
    self.signal = _PENDING_SIGNALS[0] if _PENDING_SIGNALS else None

  def __enter__(self):
    self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def check_startup(self, workdir: str) -> None:
    if self.signal:
      raise Preempted(f"signal {self.signal} during start-up, before any step: nothing to "
                      f"save; run the same command again to start ({workdir})", {})

  def _on_signal(self, signum, _):
    self.signal = signum

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)


def make_mesh(c: ml_collections.ConfigDict):
  """The (data, fsdp, model) mesh of the config's mesh section; the global batch (and each
  micro-batch) must split evenly over data x fsdp."""
  m, o = c.mesh, c.optim
  mesh = sharding.make_mesh(-1 if m.data is None else m.data, m.fsdp, m.model)
  ways = sharding.batch_ways(mesh)
  micro = o.batch_size // o.grad_accum_steps
  if micro % ways:
    raise ValueError(
        f"optim.batch_size={o.batch_size}" + (f" / grad_accum_steps={o.grad_accum_steps}"
                                              if o.grad_accum_steps > 1 else "")
        + f" = {micro} rows do not split over data x fsdp = {mesh.shape['data']} x "
          f"{mesh.shape['fsdp']} devices: make the batch a multiple of {ways}")
  return mesh


def open_sources(c: ml_collections.ConfigDict):
  """(train, validation) sources of (input, target) text pairs, or of documents for the
  pretraining objectives, opened, not read (random access); a missing dataset, file or field
  fails here."""
  d = c.data
  if d.objective != "pairs":
    train = corpora.open_corpus(d.dataset, "train", d.data_dir, d.text_field)
    if d.train_examples is not None:
      train = corpora.Head(train, d.train_examples)
    return train, corpora.open_corpus(d.dataset, "validation", d.data_dir, d.text_field)
  train = data.source(d.dataset, "train", d.train_examples, d.data_dir)
  if not d.pack and len(train) < c.optim.batch_size:
    raise ValueError(f"the training split has {len(train)} examples, fewer than one batch "
                     f"({c.optim.batch_size})")
  return train, data.source(d.dataset, "validation", c.eval.examples, d.data_dir)


def rows_kind(c: ml_collections.ConfigDict) -> str:
  if c.data.objective != "pairs":
    return f"{c.data.objective} rows"
  return "packed rows" if c.data.pack else "examples"


# metrics where lower is better (best/ keeps their minimum)
LOWER_IS_BETTER = ("loss", "perplexity")


def best_metric(c: ml_collections.ConfigDict) -> str:
  """The eval metric best/ follows: the config's, else ROUGE-Lsum / BLEU for pair tasks and
  the held-out loss for the pretraining objectives."""
  if c.eval.best_metric:
    return c.eval.best_metric
  if c.data.objective != "pairs":
    return "loss"
  return metrics.MAIN_METRIC[data.metric_of(c.data.dataset)]


def layout_of(c: ml_collections.ConfigDict) -> pipeline.Layout:
  d = c.data
  return pipeline.Layout(c.optim.batch_size, d.max_input_length, d.max_target_length,
                         pack=d.pack, pack_window=d.pack_window, seed=c.seed,
                         objective=d.objective, cross_documents=d.cross_documents)


# span corruption with a vocabulary trained here: T5's 100 sentinels after the pieces
SENTINELS = 100
CORPUS_SAMPLE_CHARS = 1_000_000  # of a corpus, to train a sentencepiece vocabulary on


def open_tokenizer(c: ml_collections.ConfigDict, workdir: str, train_source=None):
  """The run's tokenizer. A sentencepiece vocabulary is trained once, by process 0, on a
  bounded sample of the training split (train_source); other tokenizers need no data, so they
  are opened (and checked) before the workdir is written. Span corruption needs sentinels, and
  as many as a full row has spans."""
  d = c.data
  needed = span_corruption.spans_per_row(
      span_corruption.random_spans_helper(d.max_input_length)[0])
  # a vocabulary made here gets as many sentinels as a row can use (T5's 100, or more)
  extra_ids = max(SENTINELS, needed) if d.objective == "span_corruption" else 0
  if d.tokenizer == "sentencepiece":
    if train_source is None:
      return None
    # A corpus's sample is documents in a fixed random order, and smaller: sentencepiece's
    # training time grows with the sample and with how varied the text is (4M characters of
    # English-like text: 15 s on 2 cores; 1M: ~4 s), while a few hundred pieces need far less.
    sample = (data.tokenizer_sample(train_source, max_chars=CORPUS_SAMPLE_CHARS, shuffled=True)
              if d.objective != "pairs" else data.tokenizer_sample(train_source))
    tokenizer = first_on_process_0(lambda: tokenizers.get_tokenizer(
        d.tokenizer, workdir, sample, vocab_size=models.preset(c.model.arch).vocab_size,
        extra_ids=extra_ids))
  else:
    tokenizer = tokenizers.get_tokenizer(d.tokenizer, workdir, extra_ids=extra_ids)
  if d.objective == "span_corruption":
    _, count = tokenizers.sentinels(tokenizer)
    if count < needed:
      raise ValueError(f"tokenizer {d.tokenizer!r} has {count} sentinel ids but span "
                       f"corruption of {d.max_input_length} inputs needs {needed}")
  return tokenizer


def prepare_data(c: ml_collections.ConfigDict, workdir: str, train_source, eval_source,
                 tokenizer=None):
  """(tokenizer, validation data, total train steps). The validation data: the tokenized split
  (pairs), or the objective's rows of the first eval.examples held-out documents."""
  d = c.data
  tokenizer = tokenizer or open_tokenizer(c, workdir, train_source)
  layout = layout_of(c)
  if layout.documents:
    eval_split = pipeline.eval_rows(eval_source, tokenizer, layout, c.eval.examples)
  else:
    eval_split = pipeline.eval_split(eval_source, tokenizer, d.max_input_length,
                                     d.max_target_length)
  total_steps = c.optim.num_train_steps
  if not total_steps:  # packed or documents: an epoch's rows are estimated from the first window
    rows = len(train_source) * pipeline.rows_per_example(train_source, tokenizer, layout)
    total_steps = max(1, int(c.optim.num_epochs * (int(rows) // c.optim.batch_size)))
  return tokenizer, eval_split, total_steps


def data_state(batches: pipeline.TrainBatches) -> dict:
  """Every process's input position, for the checkpoint (a collective on multi-host)."""
  positions = sharding.gather_rows(np.asarray(batches.position, np.int32))
  return {"process_count": jax.process_count(), "positions": positions.tolist()}


class SkipGuard:
  """Reports each step the NaN guard skipped as it happens; after more than `limit` in a row
  the run stops as diverged."""

  def __init__(self, limit: int):
    self.limit, self.run = limit, 0

  def observe(self, step: int, skipped: bool, ckpts: checkpoints.Checkpoints) -> None:
    if not skipped:
      self.run = 0
      return
    self.run += 1
    say(f"step {step} skipped: non-finite loss, gradients or update ({self.run} in a row)")
    if self.run > self.limit:
      good = max(ckpts.steps(), default=None)
      raise Diverged(
          f"diverged: {self.run} steps in a row (to step {step}) were non-finite and skipped; "
          f"params and optimizer state are those of step {step - self.run}"
          + (f"; the last good checkpoint is step {good} in {ckpts.dir}" if good else "")
          + ". Lower optim.learning_rate (or raise optim.max_skipped_steps) and start again "
            "with another --workdir.")


def restore_or_init(ckpts: checkpoints.Checkpoints, state, shardings):
  """(state, data state) of the newest good checkpoint restored onto `shardings` (any mesh),
  else (`state` as it is, None)."""
  restored = ckpts.restore_latest_good(state, shardings)
  if restored is None:
    return state, None
  say(f"resumed from step {int(restored[0]['step'])}")
  return restored


def run_eval(params, cfg, c, split, tokenizer, mesh, eval_step) -> tuple[dict, list[str]]:
  """Eval loss and ROUGE / BLEU of the validation split (cached greedy decoding: cheap enough to
  run often; `python -m wgqa_jax.evaluate` decodes with the checkpoint's settings); held-out
  loss and perplexity for the pretraining objectives."""
  nll, n, preds = 0.0, 0.0, []
  if c.data.objective != "pairs":
    for batch in pipeline.eval_row_batches(split, c.eval.batch_size, tokenizer.pad_id):
      b_nll, b_n = eval_step(params, sharding.put_batch(batch, mesh))
      nll, n = nll + float(b_nll), n + float(b_n)
    loss = nll / max(n, 1.0)
    return {"eval/loss": loss, "eval/perplexity": float(np.exp(min(loss, 80.0)))}, []
  gen = decoding.GenerationConfig(
      max_new_tokens=c.eval.max_decode_length or c.data.max_target_length)
  for batch, texts in decoding.decode_batches(params, cfg, split, tokenizer, c.eval.batch_size,
                                              gen, mesh=mesh):
    b_nll, b_n = eval_step(params, batch)
    nll, n, preds = nll + float(b_nll), n + float(b_n), preds + texts
  scores = metrics.score(preds, [t for _, t in split.texts], data.metric_of(c.data.dataset))
  return {"eval/loss": nll / max(n, 1.0),
          **{f"eval/{k}": v["mean"] for k, v in scores.items()}}, preds


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def train(c: ml_collections.ConfigDict, workdir: str, stop_after: int | None = None) -> dict:
  """Run (or resume) training; returns the last train and eval metrics. Usable from notebooks
  and tests. Raises Preempted (after saving) on SIGTERM / SIGINT, Diverged when the NaN guard
  gives up, ValueError and friends on bad input (before the workdir is touched).

  stop_after: behave as if preempted once that many steps are done (save, raise Preempted).
  One run writes a workdir at a time: a second one refuses (wgqa_jax.workdir.Lock).
  """
  lock = workdir_lib.Lock(os.path.abspath(workdir))
  try:
    with Preemption() as preempted:
      return _train(c, workdir, stop_after, lock, preempted)
  finally:
    lock.release()


def check_tokenizer(workdir: str, tokenizer, resuming: bool) -> None:
  """A resumed run must tokenize exactly as the run it continues: the tokenizer's fingerprint
  is kept in WORKDIR/tokenizer.json and compared (an edited spm.model that still parses would
  otherwise train on other ids)."""
  path = os.path.join(workdir, "tokenizer.json")
  now = {"tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__),
         "sha256": tokenizers.fingerprint(tokenizer)}
  saved = workdir_lib.read_json(path)
  if resuming and saved is not None and saved.get("sha256") != now["sha256"]:
    raise ValueError(f"{workdir} was trained with another tokenizer than {now['tokenizer']} "
                     f"(its fingerprint in {path} differs): resume with the same vocabulary, or "
                     f"pass another --workdir")
  if is_main_process() and saved != now:
    workdir_lib.write_json(path, now)


def _train(c, workdir: str, stop_after: int | None, lock: workdir_lib.Lock,
           preempted: Preemption) -> dict:
  # ---- checks that can fail, before anything in the workdir is written ----
  validate(c)
  variant = variants.get(c.grouping.variant)
  workdir = os.path.abspath(workdir)
  check_resume(c, workdir)
  model_source = open_source(c.model)  # its config (a hub id: config.json alone)
  check_model(c, model_source.cfg)
  mesh = make_mesh(c)
  train_source, eval_source = open_sources(c)
  tokenizer = open_tokenizer(c, workdir)  # None until trained (sentencepiece), below
  model_source.open_weights()  # last: a download, once the checks passed; damage fails here
  if is_main_process():
    lock.acquire()  # creates the workdir
  os.makedirs(workdir, exist_ok=True)
  if is_main_process():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(c.to_json_best_effort(indent=2))

  # ---- data ----
  tokenizer, eval_split, total_steps = prepare_data(c, workdir, train_source, eval_source,
                                                    tokenizer)
  check_tokenizer(workdir, tokenizer, checkpoints.has_checkpoints(workdir))
  preempted.check_startup(workdir)

  # ---- model, sharded state ----
  params, cfg = build_model(
      c, tokenizer, mesh, model_source, workdir=workdir,
      calibration_data=lambda: pipeline.TrainBatches(  # the run's first batches, from the start
          train_source, tokenizer, layout_of(c), jax.process_index(), jax.process_count()))
  settings = model_source.generation_settings
  del model_source  # its memory-mapped files
  train_cfg = for_training(cfg, c)
  tx, schedule = step_lib.make_optimizer(c.optim, total_steps)
  state_shard = step_lib.state_shardings(cfg, tx, mesh)
  state = step_lib.init_state(params, tx, state_shard)
  del params
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  source_kind = ("examples" if c.data.objective == "pairs"
                 else f"documents of {corpora.describe(c.data.dataset)}")
  say(f"model: {c.grouping.variant}: {cfg.grouping.describe(cfg.num_heads)}, "
      f"{n_params / 1e6:.2f}M params | mesh {dict(mesh.shape)} | {total_steps} steps of "
      f"{c.optim.batch_size} {rows_kind(c)} from {len(train_source)} {source_kind} "
      f"| workdir {workdir}")
  preempted.check_startup(workdir)  # the model is built: the last stop before files open

  # ---- checkpoints: resume from the newest good one, if any ----
  ckpts = checkpoints.Checkpoints(workdir, c.checkpoint.keep)
  state, saved_position = restore_or_init(ckpts, state, state_shard)
  start = int(state["step"])
  layout = layout_of(c)
  position, warning = pipeline.resume_position(saved_position, start, layout,
                                               jax.process_index(), jax.process_count())
  if warning:
    say(f"warning: {warning}")
  batches = pipeline.TrainBatches(train_source, tokenizer, layout, jax.process_index(),
                                  jax.process_count(), position, workers=c.data.workers)

  # ---- compiled steps, writers ----
  train_step = step_lib.compile_train_step(train_cfg, c.optim, tx, state_shard, mesh)
  eval_step = step_lib.make_eval_step(train_cfg)
  writer = MetricWriter(workdir, start)
  guard = SkipGuard(c.optim.max_skipped_steps)
  best = BestTracker(workdir, best_metric(c), settings)

  latest_eval: dict = {}

  def evaluate_and_log(step: int) -> dict:
    result, preds = run_eval(state["params"], cfg, c, eval_split, tokenizer, mesh, eval_step)
    host_params = sharding.to_host(state["params"])  # every process: a collective on multi-host
    result.update(wgqa_weight_stats(host_params))
    writer.write(step, result, objective=c.data.objective)
    say(f"eval @ {step} ({c.data.objective}): " + " ".join(f"{k}={v:.4g}" for k, v in result.items())
        + (f" | e.g. {preds[0][:70]!r}" if preds else ""))
    best.update(step, result, host_params, cfg)
    latest_eval.update(result)
    return result

  # ---- loop ----
  rng = jax.random.PRNGKey(c.seed)
  last: dict = {}
  t0, t0_step = time.time(), start
  bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc="train",
             disable=not is_main_process(), dynamic_ncols=True)
  previous = None  # (step, its "skipped" flag), read one step late to keep the device busy
  padding = []  # padding fraction of each batch since the last log
  try:
    with jax.set_mesh(mesh):
      if c.eval.at_start and start == 0:
        evaluate_and_log(0)
      for step in bar:
        batch = next(batches)
        state, out = train_step(state, sharding.put_process_batch(batch, mesh),
                                jax.random.fold_in(rng, step))
        padding.append(pipeline.padding_fraction(batch, tokenizer.pad_id))
        done = step + 1
        if previous is not None:  # Diverged stops the run (below)
          guard.observe(previous[0], bool(sharding.to_host(previous[1])), ckpts)
        previous = (done, out["skipped"])
        if done == total_steps:
          guard.observe(done, bool(sharding.to_host(out["skipped"])), ckpts)
        if done % c.log_every == 0 or done == total_steps:
          out = sharding.to_host(out)
          dt, tokens = time.time() - t0, float(out["tokens"]) * (done - t0_step)
          last = {"train/loss": float(out["loss"]), "train/nll": float(out["nll"]),
                  "train/grad_norm": float(out["grad_norm"]), "train/lr": float(schedule(step)),
                  "train/skipped": float(out["skipped"]),
                  "train/target_tokens_per_s": tokens / max(dt, 1e-9),
                  "train/steps_per_s": (done - t0_step) / max(dt, 1e-9),
                  "train/padding": sum(padding) / len(padding)}
          padding = []
          writer.write(done, last)
          ckpts.check()  # an asynchronous save that failed for lack of space stops the run now
          last["step"] = done
          bar.set_postfix(loss=f"{last['train/loss']:.3f}",
                          tok_s=f"{last['train/target_tokens_per_s']:.0f}")
          t0, t0_step = time.time(), done
        if variant.regroups and c.grouping.regroup_every and done % c.grouping.regroup_every == 0 \
            and done != total_steps:
          state = jax.device_put(variant.regroup(sharding.to_host(state), cfg), state_shard)
        if c.eval.every > 0 and done % c.eval.every == 0 and done != total_steps:
          evaluate_and_log(done)
        if stop_after is not None and done >= stop_after:
          preempted.signal = signal.SIGTERM
        if done % c.checkpoint.every == 0 or done == total_steps or preempted.signal:
          ckpts.save(done, state, data_state(batches))
        if preempted.signal:
          stopped_at = done
          break
      else:
        if start < total_steps or total_steps not in writer.evals:
          evaluate_and_log(total_steps)
        else:  # a finished run, rerun (or killed after its last eval): that eval stands
          latest_eval.update({k: v for k, v in writer.evals[total_steps].items()
                              if k not in ("step", "objective")})
        last["step"] = total_steps
  except Diverged:
    ckpts.close()  # pending saves finish; nothing more is written
    raise
  except OSError as e:  # a full disk stops the run; what was saved stays good
    if not checkpoints.is_disk_full(e):
      raise
    raise ckpts.disk_full(e) from None
  else:  # finished or preempted: pending saves finish (a failed one raises DiskFull)
    ckpts.close()
  finally:  # whatever ended the loop
    for close in (writer.close, batches.close):
      close_unless_disk_full(close)
  last = {**latest_eval, **last}
  if preempted.signal:
    raise Preempted(f"signal {preempted.signal}: saved step {stopped_at} in "
                    f"{workdir}; run the same command again to resume", last)

  # ---- final params ----
  final_params = sharding.to_host(state["params"])
  if not bool(checkpoints.all_finite(final_params)):
    raise Diverged("the final params are not finite; final/ was not written")
  if is_main_process():
    params_io.save(final_params, cfg, os.path.join(workdir, "final"), settings)
    fold = (f" (fold WGQA: python -m wgqa_jax.convert --params={workdir}/final --fold "
            f"--out={workdir}/folded)" if cfg.grouping.weights != "none" else "")
    say(f"done: {workdir}/final{fold}")
  return last


def close_unless_disk_full(close) -> None:
  """close(), where a full disk (the buffered events it would write are lost) is no error."""
  try:
    close()
  except OSError as e:
    if not checkpoints.is_disk_full(e):
      raise


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


def main(argv: list[str] | None = None) -> int:
  cli.parse(FLAGS, argv, "wgqa_jax.train")
  if _CONFIG.value is None:
    raise ValueError("pass --config=configs/NAME.py")
  config_file = FLAGS["config"].config_filename.split(":")[0]
  workdir = _WORKDIR.value or os.path.join(
      "workdirs", os.path.splitext(os.path.basename(config_file))[0])
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO; our progress is printed
  checkpoints.quiet_disk_full_logs()  # a full disk is reported once, as DiskFull
  initialize_distributed()
  train(_CONFIG.value, workdir)
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
