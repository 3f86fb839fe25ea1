"""Every value of a training config checked before a run starts, with the key named: each
section against its owner (the variants, the datasets and corpora, the presets, the model
families' objectives, the sharding rules)."""

from __future__ import annotations

import ml_collections

from wgqa_jax.core import sharding
from wgqa_jax.core.errors import UserError
from wgqa_jax.data import corpora, tasks, text_rows
from wgqa_jax.grouping import variants
from wgqa_jax.models import families, presets
from wgqa_jax.models.config_file import ATTENTIONS, DTYPES, REMATS
from wgqa_jax.store.resolve import RANDOM
from wgqa_jax.training.config import LAYER_BUDGETS, OPTIMIZERS, PARAM_DTYPES


def validate(c: ml_collections.ConfigDict) -> None:
  """Fail early, with the key named, on values the run could only trip over later."""

  def bad(key, msg):
    section, _, name = key.rpartition(".")
    value = (c[section] if section else c)[name]
    raise UserError(f"config.{key}={value!r}: {msg}")

  g, d, o = c.grouping, c.data, c.optim
  try:
    variant = variants.get(g.variant)
  except ValueError as e:
    bad("grouping.variant", str(e).split(": ", 1)[-1])
  try:
    variant.check(**variants.options(g), regroup_every=g.regroup_every)
  except ValueError as e:
    bad("grouping.variant", str(e))
  if variant.calibrated and g.calibration_batches < 1:
    bad(
      "grouping.calibration_batches",
      f"{g.variant} calibrates its merge on training batches: give at least 1",
    )
  if g.layer_budget not in LAYER_BUDGETS:
    bad("grouping.layer_budget", f"choose from {LAYER_BUDGETS}")
  if g.layer_budget == "proxy" and not variant.calibrated:
    bad(
      "grouping.layer_budget",
      f"spreading KV heads by calibration error needs a calibrated "
      f"variant (aligned, svd, search), not {g.variant!r}",
    )
  if g.layer_budget == "proxy" and c.model.scan_layers:
    bad(
      "grouping.layer_budget",
      "per-module KV heads give the layers different shapes, which "
      "cannot be scanned: set model.scan_layers=False",
    )
  if c.model.init_from == RANDOM and c.model.arch not in presets():
    bad("model.arch", f"choose from {sorted(presets())}")
  loss_on = sorted({v for f in families().values() for v in f.loss_on})
  if o.loss_on is not None and o.loss_on not in loss_on:
    bad("optim.loss_on", f"choose from {tuple(loss_on)} (or leave it unset)")
  if c.model.remat not in REMATS:
    bad("model.remat", f"choose from {REMATS}")
  if c.model.dtype not in DTYPES:
    bad("model.dtype", f"choose from {DTYPES}")
  if c.model.param_dtype not in PARAM_DTYPES:
    bad("model.param_dtype", f"choose from {PARAM_DTYPES} (float16 params would need loss scaling)")
  if c.optim.optimizer not in OPTIMIZERS:
    bad("optim.optimizer", f"choose from {OPTIMIZERS}")
  if d.objective not in text_rows.OBJECTIVES:
    bad("data.objective", f"choose from {text_rows.OBJECTIVES}")
  if d.objective == "pairs" and d.dataset not in tasks.DATASETS:
    bad(
      "data.dataset",
      f"choose from {list(tasks.DATASETS)}"
      + (
        " (a text corpus needs data.objective=span_corruption or causal_lm)"
        if corpora.is_corpus(d.dataset)
        else ""
      ),
    )
  if d.objective != "pairs" and not corpora.is_corpus(d.dataset):
    bad(
      "data.dataset",
      f"data.objective={d.objective} reads a text corpus: "
      f"{corpora.STDLIB}, tfds:NAME or a prepared corpus directory"
      + (
        " (this is a task of input/target pairs: data.objective=pairs)"
        if d.dataset in tasks.DATASETS
        else ""
      ),
    )
  if d.objective == "causal_lm" and o.loss_on not in (None, "all"):
    bad(
      "optim.loss_on", "causal_lm trains on every token of the documents: leave it unset or 'all'"
    )
  for key in (
    "optim.batch_size",
    "optim.grad_accum_steps",
    "optim.max_skipped_steps",
    "data.max_input_length",
    "data.max_target_length",
    "log_every",
    "eval.batch_size",
    "eval.max_rows",
    "checkpoint.every",
    "checkpoint.keep",
  ):
    section, _, name = key.rpartition(".")
    if (c[section] if section else c)[name] <= 0:
      bad(key, "must be positive")
  if c.model.attention not in ATTENTIONS:
    bad("model.attention", f"choose from {list(ATTENTIONS)}")
  if c.eval.examples is not None and c.eval.examples <= 0:
    bad("eval.examples", "must be positive (the validation examples, or held-out documents)")
  if o.batch_size % o.grad_accum_steps:
    bad("optim.batch_size", f"must be divisible by grad_accum_steps={o.grad_accum_steps}")
  if o.learning_rate <= 0:
    bad("optim.learning_rate", "must be positive")
  if (o.num_train_steps or 0) <= 0 and o.num_epochs <= 0:
    bad("optim.num_epochs", "set num_epochs > 0 or num_train_steps > 0")
  if g.regroup_every < 0:
    bad("grouping.regroup_every", "must be >= 0")
  if d.workers < 0:
    bad("data.workers", "must be >= 0")
  if d.pack_window <= 0:
    bad("data.pack_window", "must be positive")
  if d.objective == "span_corruption":
    text_rows.check_span_lengths(d.max_input_length, d.max_target_length)
  sharding.parse_rules(c.mesh.param_rules, "mesh.param_rules")
  sharding.parse_rules(c.mesh.activation_rules, "mesh.activation_rules")
  if d.pack and not variant.packs:
    bad(
      "data.pack",
      f"{g.variant} chooses its heads per row, which packing would share across "
      f"examples; train it unpacked",
    )
