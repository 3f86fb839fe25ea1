"""What must hold before a run writes anything: the variant and objective fit the model, a
workdir resumes only under the config it started with, and the batch splits over the mesh.
Each fails in one line (UserError); the trainer, the sweeps and the planner ask the same."""

from __future__ import annotations

import json
import os

import ml_collections

from wgqa_jax.core import sharding, workdir as workdir_lib
from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping import variants
from wgqa_jax.models import family_of
from wgqa_jax.models.attention import cudnn_refusal
from wgqa_jax.store import checkpoints
from wgqa_jax.store.resolve import RANDOM
from wgqa_jax.training.config import resume_differences


def check_model(c: ml_collections.ConfigDict, src) -> None:
  """Fail now if the variant or the objective does not fit the model (src: the model config
  of model.init_from)."""
  family = family_of(src)
  if c.optim.loss_on is not None and c.optim.loss_on not in family.loss_on:
    raise UserError(
      f"config.optim.loss_on={c.optim.loss_on!r}: {family.title} always trains "
      f"on its targets; loss_on is for decoder-only models"
    )
  objective = c.data.objective
  if objective not in family.objectives:
    model = c.model.arch if c.model.init_from == RANDOM else c.model.init_from
    right = [o for o in family.objectives if o != "pairs"]
    raise UserError(
      f"config.data.objective={objective!r} does not fit {model} "
      f"({family.description}): use data.objective={right[0]} (or pairs)"
    )
  run_grouping(c, src)  # a UserError where the variant does not fit the model


def run_grouping(c: ml_collections.ConfigDict, src):
  """The grouping the run trains: the variant's of an MHA source, else the source's own."""
  g = c.grouping
  if not variants.is_mha(src):
    return src.grouping
  variant = variants.get(g.variant)
  return variant.configure(variant.grouping(src.num_heads, g.kv_heads, **variants.options(g)), src)


def attention_notes(c: ml_collections.ConfigDict, src, platform: str) -> list[str]:
  """What model.attention runs on `platform` (jax.default_backend()), one line each, where
  that is not simply the form asked for; a one-line refusal for attention=cudnn where cuDNN
  flash attention cannot run the model (src: the model config of model.init_from)."""
  form = c.model.attention
  grouping = run_grouping(c, src)
  if grouping.latent and form != "einsum":
    if form == "cudnn":
      raise UserError(
        f"model.attention=cudnn: {c.grouping.variant} attends over a latent, which cuDNN "
        f"flash attention does not take; use attention=einsum"
      )
    return [f"attention: {c.grouping.variant} attends over its latent in the einsum form"]
  if form not in ("dot_product", "cudnn"):
    return []
  dropout = src.dropout_rate if c.model.dropout_rate is None else c.model.dropout_rate
  reason = cudnn_refusal(c.model.dtype, src.head_dim, platform)
  if grouping.unequal:
    reason = reason or f"{c.grouping.variant} gives query heads unequal groups (gathered)"
  if form == "cudnn" and reason:
    raise UserError(
      f"model.attention=cudnn: {reason}; use attention=dot_product (cuDNN where it can run, "
      f"XLA otherwise) or blockwise"
    )
  notes = []
  if grouping.unequal:
    notes.append(f"attention: {c.grouping.variant} gathers unequal groups: the einsum form")
  elif reason:
    notes.append(f"attention: dot_product runs its XLA form: {reason}")
  if dropout > 0 or grouping.attention_noise > 0:
    what = "dropout" if dropout > 0 else "PGQA's noise"
    notes.append(
      f"attention: training steps use the einsum form ({what} on the attention weights); "
      f"evaluation and decoding use {form}"
    )
  return notes


def check_resume(c: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir with checkpoints resumes only under the config it was started with (up to the
  keys training.config.RESUMABLE_CHANGES lists): one line per differing key, else nothing.
  So does one whose checkpoints are gone but whose results are not (best/, final/): another
  config would write over them, and best/ could stay the old run's model."""
  saved = os.path.join(workdir, workdir_lib.RUN_CONFIG)
  results = (workdir_lib.BEST, workdir_lib.BEST_RECORD, workdir_lib.FINAL)
  if not os.path.exists(saved) or not (
    checkpoints.has_checkpoints(workdir)
    or any(os.path.exists(os.path.join(workdir, r)) for r in results)
  ):
    return
  diffs = _differences(saved, c)
  if diffs:
    raise UserError(
      f"{workdir} holds a run started with another config, and resuming it must "
      f"keep: {'; '.join(diffs)}. To start fresh, pass another --workdir."
    )


def _differences(saved: str, c: ml_collections.ConfigDict) -> list[str]:
  with open(saved) as f:
    return resume_differences(json.load(f), c)


def check_finished_run(c: ml_collections.ConfigDict, workdir: str) -> None:
  """A finished run's results are reused (sweep, pareto) only under the config it ran with,
  whether or not its checkpoints are still there."""
  saved = os.path.join(workdir, workdir_lib.RUN_CONFIG)
  if not os.path.exists(saved):
    raise UserError(
      f"{workdir} holds results but no {workdir_lib.RUN_CONFIG}: cannot tell what they are "
      f"of; remove it to run it again"
    )
  diffs = _differences(saved, c)
  if diffs:
    raise UserError(
      f"{workdir} holds the results of another config ({'; '.join(diffs)}): they would "
      f"stand for this one. Remove it to run it again, or pass another --out"
    )


def make_mesh(c: ml_collections.ConfigDict):
  """The (data, fsdp, model) mesh of the config's mesh section; the global batch (and each
  micro-batch) must split evenly over data x fsdp."""
  m, o = c.mesh, c.optim
  mesh = sharding.make_mesh(-1 if m.data is None else m.data, m.fsdp, m.model)
  ways = sharding.batch_ways(mesh)
  micro = o.batch_size // o.grad_accum_steps
  if micro % ways:
    raise UserError(
      f"optim.batch_size={o.batch_size}"
      + (f" / grad_accum_steps={o.grad_accum_steps}" if o.grad_accum_steps > 1 else "")
      + f" = {micro} rows do not split over data x fsdp = {mesh.shape['data']} x "
      f"{mesh.shape['fsdp']} devices: make the batch a multiple of {ways}"
    )
  return mesh


def sharding_rules(c: ml_collections.ConfigDict) -> sharding.Rules:
  """The config's logical-axis rules: the defaults, with mesh.param_rules and
  mesh.activation_rules applied over them."""
  return sharding.Rules.with_overrides(c.mesh.param_rules, c.mesh.activation_rules)
