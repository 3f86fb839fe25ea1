"""T5's training loss inputs: the decoder predicts `targets` from `inputs` (pairs, or span
corruption's rows), teacher-forced; the loss is on the target tokens."""

from __future__ import annotations

import jax.numpy as jnp

from wgqa_jax.core.errors import UserError
from wgqa_jax.models import layers
from wgqa_jax.models.t5.config import T5Config
from wgqa_jax.models.t5.model import T5, shift_right


def forward(
  params, batch, cfg: T5Config, rng=None, train: bool = False, loss_on=None, mutable=False
):
  """(logits, labels, label weights) of a T5 batch; with `mutable` (collection names, e.g.
  wgqa_jax.training.calibration's) also the variables the modules sowed."""
  if loss_on is not None:
    raise UserError(f"loss_on={loss_on!r} is for decoder-only models; T5 trains on its targets")
  targets, inputs = batch["targets"], batch["inputs"]
  enc_seg, dec_seg = batch.get("inputs_segment_ids"), batch.get("targets_segment_ids")  # packed
  dec_in = shift_right(targets, cfg.decoder_start_token_id, cfg.pad_token_id, dec_seg)
  out = T5(cfg).apply(
    {"params": layers.module_params(params, cfg)},
    inputs,
    dec_in,
    (inputs != cfg.pad_token_id).astype(jnp.int32),
    deterministic=not train,
    rngs={"dropout": rng} if train else None,
    encoder_segment_ids=enc_seg,
    decoder_segment_ids=dec_seg,
    mutable=mutable,
  )
  weights = (targets != cfg.pad_token_id).astype(jnp.float32)
  if mutable:
    return (out[0], targets, weights), out[1]
  return out, targets, weights
