"""A checkpoint converted: loaded (wgqa_jax.store.resolve), re-grouped through its MHA
equivalent when it is already grouped, converted to a variant, WGQA weights folded (the command
line: wgqa_jax/tools/convert.py, which writes the result)."""

from __future__ import annotations

import dataclasses

import numpy as np

from wgqa_jax.core.errors import MissingInput, UserError
from wgqa_jax.grouping import variants
from wgqa_jax.store import params_io
from wgqa_jax.store.resolve import ModelSource, resolve
from wgqa_jax.training import calibration


def load(name: str, kind: str) -> ModelSource:
  """The source a --hf (kind "hf") or --params (kind "params") flag names."""
  source = resolve(name)
  if kind == "params" and source.kind != "params":
    raise MissingInput(
      f"{name} is not a wgqa_jax params directory: missing "
      f"{params_io.CONFIG_FILE} (a HF checkpoint: pass --hf)"
    )
  if kind == "hf" and source.kind != "hf":
    raise MissingInput(
      f"{name} has no config.json: not a Hugging Face model directory (our "
      f"params dir: pass --params)"
    )
  return source


def has_encoder(cfg) -> bool:
  """Whether grouping the encoder groups anything more (an encoder-decoder model)."""

  def grouped(group_encoder: bool) -> int:
    g = dataclasses.replace(cfg.grouping, group_encoder=group_encoder)
    return sum(on for _, on in cfg.replace(grouping=g).attention_modules())

  return grouped(True) > grouped(False)


def check(variant: str | None, calibration_file: str | None) -> None:
  """Fail before anything is loaded on a calibrated variant without statistics."""
  if variant and variants.get(variant).calibrated and not calibration_file:
    raise UserError(
      f"--variant={variant} merges by what the heads compute: pass "
      f"--calibration=WORKDIR/calibration.npz (written by python -m wgqa_jax.train "
      f"with this variant)"
    )


def convert(
  params,
  cfg,
  variant: str | None = None,
  kv_heads: int | None = None,
  *,
  group_encoder: bool = False,
  group_sizes=None,
  seed: int = 0,
  calibration_file: str | None = None,
  fold: bool = False,
):
  """(params, cfg) converted as asked; a checkpoint that is already GQA (a Llama with
  num_key_value_heads < H) is re-grouped through its MHA equivalent."""
  check(variant, calibration_file)
  plain = cfg.grouping.weights == "none" and not cfg.grouping.unequal
  if variant and not variants.is_mha(cfg) and plain:
    print(f"re-grouping {cfg.grouping.describe(cfg.num_heads)} through its MHA equivalent")
    params, cfg = variants.expand_to_mha(params, cfg)
  if group_encoder and not has_encoder(cfg):
    raise UserError("--group_encoder: this model has no encoder (a decoder-only model)")
  if variant:
    options = variants.options({"group_encoder": group_encoder, "group_sizes": group_sizes})
    stats = calibration.load(calibration_file, cfg) if calibration_file else None
    params, cfg = variants.from_mha(
      params, cfg, variant, kv_heads, seed=seed, calibration=stats, **options
    )
  if fold:
    params, cfg = variants.fold(params, cfg)
  n = sum(np.size(v) for v in params_io.flatten(params).values())
  print(f"model: {cfg.grouping.describe(cfg.num_heads)}, {n / 1e6:.2f}M params")
  return params, cfg
