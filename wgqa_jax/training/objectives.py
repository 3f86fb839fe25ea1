"""Training losses, as sums over tokens (the train step divides by the token count, so gradient
accumulation and packing weigh every token alike), over what the model's family gives for a
batch (models.family.Family.forward: logits, labels and label weights):

- T5 (encoder-decoder): the decoder predicts `targets` from `inputs`; loss on the targets
  (span corruption, T5's pretraining, has rows of the same shape).
- decoder-only: each example is one sequence `[BOS] input EOS target EOS`; next-token loss on
  every token ("all") or on the target only ("answer"); eval loss is always the answer's, the
  same quantity T5 reports. Rows of documents (causal_lm) count every token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wgqa_jax.models import family_of


def token_loss_sums(logits, labels, weights, label_smoothing: float, z_loss: float):
  """(sum of token losses, sum of weights, sum of plain NLLs) of logits (..., V) at labels."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  logp = logits - logz[..., None]
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  loss = nll
  if label_smoothing > 0:
    loss = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
  if z_loss > 0:
    loss = loss + z_loss * logz**2
  return (loss * weights).sum(), weights.sum(), (nll * weights).sum()


def forward(
  params, batch, cfg, rng=None, train: bool = False, loss_on: str | None = None, mutable=False
):
  """(logits, labels, label weights) of `cfg`'s family (and the sown variables, `mutable`)."""
  return family_of(cfg).forward(params, batch, cfg, rng, train, loss_on, mutable)


def loss_sums(
  params,
  batch,
  rng,
  cfg,
  label_smoothing: float,
  z_loss: float,
  train: bool,
  loss_on: str | None = None,
):
  """(sum of token losses, number of loss tokens, sum of log-likelihood-only losses) of `cfg`'s
  family. loss_on: for the families that take it (decoder-only: "all", the default, or
  "answer")."""
  split = family_of(cfg).forward_hidden(params, batch, cfg, rng, train, loss_on)
  if split is None:
    logits, labels, weights = forward(params, batch, cfg, rng, train, loss_on)
    return token_loss_sums(logits, labels, weights, label_smoothing, z_loss)
  hidden, head, labels, weights = split
  if hidden.shape[1] > LOSS_CHUNK:
    return chunked_loss_sums(hidden, head, labels, weights, label_smoothing, z_loss)
  return token_loss_sums(head(hidden), labels, weights, label_smoothing, z_loss)


LOSS_CHUNK = 1024  # positions whose logits the loss holds at a time (families that split)


def chunked_loss_sums(hidden, head, labels, weights, label_smoothing: float, z_loss: float):
  """token_loss_sums over chunks of LOSS_CHUNK positions, each chunk's logits made by
  head(hidden chunk) and, in the backward pass, made again: a (b, t, V) float32 array and its
  gradient are never whole in memory (at 4096 tokens and 32k vocab, 0.5 GiB a row each). The
  same sums as the whole, added in another order."""
  b, t = labels.shape
  n = -(-t // LOSS_CHUNK)
  pad = n * LOSS_CHUNK - t
  if pad:  # padded positions weigh nothing
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    labels, weights = (jnp.pad(x, ((0, 0), (0, pad))) for x in (labels, weights))
  chunks = lambda x: jnp.moveaxis(x.reshape(b, n, LOSS_CHUNK, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def one(sums, chunk):
    h, lab, w = chunk
    return sums + jnp.stack(token_loss_sums(head(h), lab, w, label_smoothing, z_loss)), None

  sums, _ = jax.lax.scan(one, jnp.zeros(3), (chunks(hidden), chunks(labels), chunks(weights)))
  return sums[0], sums[1], sums[2]


def eval_loss_on(cfg) -> str | None:
  """What eval/loss measures: the answer given the prompt, for every family."""
  return family_of(cfg).eval_loss_on
