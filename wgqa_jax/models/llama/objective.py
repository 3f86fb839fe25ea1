"""A decoder-only model's training loss inputs. Each example of pairs is one sequence
`[BOS] input EOS target EOS` (wgqa_jax.models.llama.causal_view), with next-token loss on every
token ("all": language modelling on the text) or on the target tokens only ("answer":
instruction-style tuning); eval loss is always the answer's, the quantity T5 reports. Rows of
documents (data.objective=causal_lm: {tokens, segment_ids, positions}, wgqa_jax.data.text_rows)
already are sequences; the loss is on every token."""

from __future__ import annotations

import jax.numpy as jnp

from wgqa_jax.models import layers
from wgqa_jax.models.llama import causal_view
from wgqa_jax.models.llama.config import LlamaConfig
from wgqa_jax.models.llama.model import Llama


def forward(
  params,
  batch,
  cfg: LlamaConfig,
  rng=None,
  train: bool = False,
  loss_on: str | None = None,
  mutable=False,
):
  """(logits, labels, label weights) of a decoder-only batch, aligned so that position t
  predicts label t; with `mutable` also the variables the modules sowed. Llama trains without
  dropout: rng and train change nothing."""
  s = sequences(batch, cfg)
  seg = s["segment_ids"]
  out = Llama(cfg).apply(
    {"params": layers.module_params(params, cfg)},
    s["tokens"],
    (seg > 0).astype(jnp.int32),
    s["positions"],
    seg,
    mutable=mutable,
  )
  logits = out[0] if mutable else out
  result = logits[:, :-1], *labels_and_weights(s, loss_on)
  return (result, out[1]) if mutable else result


def forward_hidden(params, batch, cfg: LlamaConfig, loss_on: str | None = None):
  """(hidden states, head, labels, label weights): `forward` with the output projection left
  to head(hidden chunk) (models.family.Family.forward_hidden)."""
  s = sequences(batch, cfg)
  seg = s["segment_ids"]
  variables = {"params": layers.module_params(params, cfg)}
  model = Llama(cfg)
  hidden = model.apply(
    variables, s["tokens"], (seg > 0).astype(jnp.int32), s["positions"], seg, method=Llama.hidden
  )
  head = lambda x: model.apply(variables, x, method=Llama.logits)
  return (hidden[:, :-1], head, *labels_and_weights(s, loss_on))


def sequences(batch, cfg: LlamaConfig) -> dict:
  """Rows of documents are sequences already; rows of pairs are compacted into sequences."""
  return batch if "tokens" in batch else causal_view.sequences(batch, cfg.eos_token_id)


def labels_and_weights(s: dict, loss_on: str | None):
  """Token t predicts token t + 1 of the same example: (labels, weights) of positions 0..t-2."""
  seg = s["segment_ids"]
  weights = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
  if (loss_on or "all") == "answer" and "answer" in s:  # documents: every token counts
    weights = weights & s["answer"][:, 1:]
  return s["tokens"][:, 1:], weights.astype(jnp.float32)
