"""The model a run trains, from its config and its source (wgqa_jax.store.resolve): the source
as the run reads it, the config it converts to (the one the planner compiles), calibration for
the calibrated variants, and the params placed on the mesh."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from wgqa_jax.core import sharding, workdir as workdir_lib
from wgqa_jax.core.errors import UserError
from wgqa_jax.core.processes import is_main_process, say
from wgqa_jax.grouping import kv_budget, variants
from wgqa_jax.models import family_of
from wgqa_jax.store import checkpoints, streaming
from wgqa_jax.store.resolve import ModelSource
from wgqa_jax.training import calibration, steps


def with_run_numerics(cfg, c: ml_collections.ConfigDict):
  """cfg with the run's compute and param dtypes, attention form and, when set, dropout (what
  best/ and final/ keep)."""
  changes = dict(dtype=c.model.dtype, param_dtype=c.model.param_dtype, attention=c.model.attention)
  if c.model.dropout_rate is not None:
    changes["dropout_rate"] = c.model.dropout_rate
  return cfg.replace(**changes)


def for_training(cfg, c: ml_collections.ConfigDict):
  """cfg with the training-only layer options (remat, scanned layers) the step compiles with."""
  return cfg.replace(remat=c.model.remat, scan_layers=c.model.scan_layers)


def calibration_config(cfg, c: ml_collections.ConfigDict):
  """The MHA model as calibration runs it: the run's numerics, its layers scanned when the
  run's are (no remat: there is no backward pass)."""
  return with_run_numerics(cfg, c).replace(scan_layers=c.model.scan_layers, remat="none")


def open_weights(c: ml_collections.ConfigDict, source: ModelSource, tokenizer=None):
  """The weights the run starts from, as a reader (`cfg`, `read(path)`): the checkpoint's,
  opened; for a random init, the preset (taking the tokenizer's vocabulary when larger, and
  its special ids) initialised with the run's seed, in host memory."""
  if not source.is_random:
    return source.open_weights()
  cfg = source.cfg
  if tokenizer is not None:
    cfg = family_of(cfg).for_tokenizer(
      cfg.replace(vocab_size=max(tokenizer.vocab_size, cfg.vocab_size)), tokenizer
    )
  family = family_of(cfg)
  return streaming.MemorySource(
    jax.device_get(family.init_params(cfg, jax.random.PRNGKey(c.seed))), cfg
  )


def converted_config(
  c: ml_collections.ConfigDict, cfg, read=None, stats=None, allocation: dict | None = None
):
  """(the model config the run trains, convert): the source's config `cfg` as c.grouping
  groups it (a grouped source is uptrained as it is), each module's own KV heads for
  layer_budget=proxy (spread by calibration error: read(path) gives the MHA model's params,
  `stats` its calibration statistics; or `allocation`, the {module: G} a run started with),
  with the run's numerics. convert(module, path) turns one attention module's MHA params into
  the variant's (variants.converter)."""
  g = c.grouping
  convert = None
  if variants.is_mha(cfg):
    module_kv_heads = None
    if g.layer_budget == "proxy" and allocation is not None:
      module_kv_heads = allocation
    elif g.layer_budget == "proxy":  # the same KV heads in all, spread by calibration error
      if stats is None:
        raise UserError(
          "grouping.layer_budget=proxy spreads the KV heads by calibration error "
          "on the run's data: it needs the MHA model's calibration statistics"
        )
      module_kv_heads = kv_budget.by_proxy(read, cfg, stats, g.variant, g.kv_heads)
      what = "latent rank" if g.variant == "mla" else "KV heads"
      say(
        f"{what} per module: {','.join(map(str, module_kv_heads.values()))} "
        f"({sum(module_kv_heads.values())} in all, the bytes of {g.kv_heads} KV heads in each)"
      )
    cfg, convert = variants.converter(
      cfg,
      g.variant,
      g.kv_heads,
      **variants.options(g),
      seed=c.seed,
      calibration=stats,
      module_kv_heads=module_kv_heads,
    )
  return with_run_numerics(cfg, c), convert


def check_tokenizer_fits(c: ml_collections.ConfigDict, cfg, tokenizer, source: ModelSource):
  if tokenizer.vocab_size > cfg.vocab_size:
    raise UserError(
      f"tokenizer {c.data.tokenizer!r} has {tokenizer.vocab_size} ids but the "
      f"model only {cfg.vocab_size} embeddings"
    )
  if tokenizer.eos_id != cfg.eos_token_id:
    raise UserError(
      f"tokenizer {c.data.tokenizer!r} ends examples with id {tokenizer.eos_id} "
      f"but the model's eos_token_id is {cfg.eos_token_id}: train with the "
      f"checkpoint's own tokenizer (config.data.tokenizer="
      f"{source.tokenizer or c.model.init_from})"
    )


def build_model(
  c: ml_collections.ConfigDict,
  tokenizer,
  mesh,
  source: ModelSource,
  calibration_data=None,
  workdir: str | None = None,
):
  """(params placed on `mesh` as the state shards them, model config): a random init or a
  checkpoint read tensor by tensor (wgqa_jax.store.streaming), converted to the variant one
  attention module at a time, never whole in host memory. A calibrated variant first runs the
  MHA model on `calibration_data()` (an iterator of this process's training rows; see
  calibrate)."""
  reader = open_weights(c, source, tokenizer)
  cfg = reader.cfg
  check_tokenizer_fits(c, cfg, tokenizer, source)
  stats = None
  if variants.is_mha(cfg) and variants.get(c.grouping.variant).calibrated:
    stats = calibrate(c, reader, cfg, mesh, calibration_data, workdir)
  kept = kept_allocation(c, cfg, workdir)
  cfg, convert = converted_config(c, cfg, reader.read, stats, kept)
  if c.grouping.layer_budget == "proxy" and kept is None and workdir and is_main_process():
    workdir_lib.write_json(
      os.path.join(workdir, workdir_lib.KV_ALLOCATION),
      dict(cfg.grouping.module_latent_rank or cfg.grouping.module_kv_heads),
    )
  params = streaming.load_sharded(
    reader,
    cfg,
    steps.param_shardings(cfg, mesh),
    convert,
    desc=None if source.is_random else f"loading {c.model.init_from}",
  )
  return params, cfg


def kept_allocation(c: ml_collections.ConfigDict, cfg, workdir: str | None) -> dict | None:
  """The {module: G} a layer_budget=proxy run started with (WORKDIR/kv_allocation.json), which
  its resumes keep: derived again, a near tie may fall the other way (other hardware, other
  calibration numerics) and the checkpoint would no longer fit. None for a fresh run."""
  if c.grouping.layer_budget != "proxy" or not workdir:
    return None
  path = os.path.join(workdir, workdir_lib.KV_ALLOCATION)
  if not checkpoints.has_checkpoints(workdir):
    return None
  saved = workdir_lib.read_json(path)
  if saved is None:  # a run from before the file: derived again, as it was then
    return None
  modules = [m for m, grouped in cfg.attention_modules() if grouped]
  try:
    allocation = {m: int(saved["/".join(m)]) for m in modules}
    # KV heads, or for mla latent ranks (up to the full K/V width)
    most = 2 * cfg.num_heads * cfg.head_dim if c.grouping.variant == "mla" else cfg.num_heads
    assert len(saved) == len(modules) and all(1 <= g <= most for g in allocation.values())
  except (KeyError, TypeError, ValueError, AssertionError):
    raise UserError(
      f"{path} does not hold a KV allocation of this model's {len(modules)} grouped attention "
      f"modules: the file is damaged (pass another --workdir to start afresh)"
    ) from None
  what = "latent rank" if c.grouping.variant == "mla" else "KV heads"
  say(f"{what} per module: {','.join(map(str, allocation.values()))} (kept from {path})")
  return allocation


def calibrate(
  c: ml_collections.ConfigDict, reader, cfg, mesh, calibration_data, workdir: str
) -> calibration.Statistics:
  """The MHA model's calibration statistics over the first grouping.calibration_batches
  training batches, kept in WORKDIR/calibration.npz: a resumed run reads them back, so its
  conversion is the one the run started from."""
  path = os.path.join(workdir, workdir_lib.CALIBRATION)
  # what the statistics were computed from: a file left by a run of other data or another
  # model (one that stopped before its first checkpoint, so check_resume had nothing to compare)
  # is computed afresh, never reused
  source = json.dumps(
    {
      "init_from": c.model.init_from,
      "seed": c.seed,
      "data": c.data.to_dict(),
      "batch_size": c.optim.batch_size,
      "dtype": c.model.dtype,
      "batches": c.grouping.calibration_batches,
    },
    sort_keys=True,
  )
  if os.path.exists(path):
    try:
      stats = calibration.load(path, cfg)
    except UserError as e:  # the run's own file, damaged: what it held is computed again
      say(f"calibration: {e}; computing it afresh")
    else:
      if stats.source == source:
        return stats
      say(f"calibration: {path} was computed for another model or data; computing it afresh")
  run_cfg = calibration_config(cfg, c)
  params = streaming.load_sharded(
    reader, run_cfg, steps.param_shardings(run_cfg, mesh), desc="calibration: loading the MHA model"
  )
  rows = calibration_data()
  try:
    placed = (sharding.put_process_batch(batch, mesh) for batch in rows)
    with jax.set_mesh(mesh):  # activations sharded as in training (what the planner sizes)
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
