"""Training losses per model family, as sums over tokens (the train step divides by the token
count, so gradient accumulation and packing weigh every token alike).

- t5 (encoder-decoder): the decoder predicts `targets` from `inputs`; loss on the target tokens.
- llama (decoder-only): each example is one sequence `[BOS] input EOS target EOS`
  (wgqa_jax.causal_view); next-token loss on every token ("all": language modelling on the
  text) or on the target tokens only ("answer": instruction-style tuning). Eval loss is always
  the answer's, the same quantity T5 reports.
- llama, pretraining (data.objective=causal_lm): rows of documents already are sequences
  ({tokens, segment_ids, positions}: wgqa_jax.text_rows); loss on every token.
- span corruption (T5 pretraining) is T5's loss: its rows are inputs and targets.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from wgqa_jax import causal_view, models
from wgqa_jax.models import layers, llama, t5

LOSS_ON = ("all", "answer")


def token_loss_sums(logits, labels, weights, label_smoothing: float, z_loss: float):
  """(sum of token losses, sum of weights, sum of plain NLLs) of logits (..., V) at labels."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  logp = logits - logz[..., None]
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  loss = nll
  if label_smoothing > 0:
    loss = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
  if z_loss > 0:
    loss = loss + z_loss * logz ** 2
  return (loss * weights).sum(), weights.sum(), (nll * weights).sum()


def t5_forward(params, batch, cfg, rng=None, train: bool = False, mutable=False):
  """(logits, labels, label weights) of a T5 batch; with `mutable` (collection names, e.g.
  wgqa_jax.calibration's) also the variables the modules sowed."""
  targets, inputs = batch["targets"], batch["inputs"]
  enc_seg, dec_seg = batch.get("inputs_segment_ids"), batch.get("targets_segment_ids")  # packed
  dec_in = t5.shift_right(targets, cfg.decoder_start_token_id, cfg.pad_token_id, dec_seg)
  out = t5.T5(cfg).apply(
      {"params": layers.module_params(params, cfg)}, inputs, dec_in,
      (inputs != cfg.pad_token_id).astype(jnp.int32), deterministic=not train,
      rngs={"dropout": rng} if train else None, encoder_segment_ids=enc_seg,
      decoder_segment_ids=dec_seg, mutable=mutable)
  weights = (targets != cfg.pad_token_id).astype(jnp.float32)
  if mutable:
    return (out[0], targets, weights), out[1]
  return out, targets, weights


def llama_forward(params, batch, cfg, loss_on: str = "all", mutable=False):
  """(logits, labels, label weights) of a decoder-only batch, aligned so that position t
  predicts label t; with `mutable` also the variables the modules sowed."""
  # rows of documents are sequences already; rows of pairs are compacted into sequences
  s = batch if "tokens" in batch else causal_view.sequences(batch, cfg.eos_token_id)
  seg = s["segment_ids"]
  out = llama.Llama(cfg).apply({"params": layers.module_params(params, cfg)}, s["tokens"],
                               (seg > 0).astype(jnp.int32), s["positions"], seg,
                               mutable=mutable)
  logits = out[0] if mutable else out
  # token t predicts token t + 1 of the same example
  weights = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
  if loss_on == "answer" and "answer" in s:  # documents have no answer: every token counts
    weights = weights & s["answer"][:, 1:]
  result = logits[:, :-1], s["tokens"][:, 1:], weights.astype(jnp.float32)
  return (result, out[1]) if mutable else result


def forward(params, batch, cfg, rng=None, train: bool = False, loss_on: str | None = None,
            mutable=False):
  """(logits, labels, label weights) of `cfg`'s family (and the sown variables, `mutable`)."""
  if models.is_causal(cfg):
    return llama_forward(params, batch, cfg, loss_on or "all", mutable)
  if loss_on is not None:
    raise ValueError(f"loss_on={loss_on!r} is for decoder-only models; T5 trains on its targets")
  return t5_forward(params, batch, cfg, rng, train, mutable)


def loss_sums(params, batch, rng, cfg, label_smoothing: float, z_loss: float, train: bool,
              loss_on: str | None = None):
  """(sum of token losses, number of loss tokens, sum of log-likelihood-only losses) of `cfg`'s
  family. loss_on: decoder-only only, "all" (default) or "answer"."""
  logits, labels, weights = forward(params, batch, cfg, rng, train, loss_on)
  return token_loss_sums(logits, labels, weights, label_smoothing, z_loss)


def eval_loss_on(cfg) -> str | None:
  """What eval/loss measures: the answer given the prompt, for every family."""
  return "answer" if models.is_causal(cfg) else None
