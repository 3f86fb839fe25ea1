"""How a decoder-only model reads the pipeline's two-sided rows (wgqa_jax.data.pipeline:
`inputs` and `targets`, padded or packed, each example EOS-terminated).

Each example becomes one sequence, prompt then answer: `[BOS] input EOS target EOS` (BOS when the
tokenizer has one, added by pipeline.Tokenize). `sequences` compacts a batch of rows into such
sequences inside the jitted step, so one pipeline, one packing and one resumable position serve
both families; `prompts` turns the inputs side into the left-padded prompts generation expects.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def real_tokens(ids, eos_id: int):
  """1 on an unpacked row's tokens up to and including its first EOS, 0 after it (padding,
  whatever its id: a pad may equal EOS); a row without EOS (eval's filler rows) is all padding."""
  is_eos = (ids == eos_id).astype(jnp.int32)
  seen = jnp.cumsum(is_eos, axis=1)
  return ((seen - is_eos == 0) & (seen[:, -1:] > 0)).astype(jnp.int32)


def sequences(batch: dict, eos_id: int) -> dict:
  """Rows of (b, Li) inputs and (b, Lt) targets -> (b, Li + Lt) sequences:

  tokens       each example's input then its target, examples in row order, padding last
  segment_ids  1, 2, ... per example (packed rows: the pipeline's), 0 on padding
  positions    0.. within each example (RoPE positions)
  answer       True on target tokens
  """
  inputs, targets = batch["inputs"], batch["targets"]
  b, li = inputs.shape
  length = li + targets.shape[1]
  tokens = jnp.concatenate([inputs, targets], axis=1)
  if "inputs_segment_ids" in batch:  # packed: example k has segment k + 1 on both sides
    seg = jnp.concatenate([batch["inputs_segment_ids"], batch["targets_segment_ids"]], axis=1)
  else:
    seg = jnp.concatenate([real_tokens(inputs, eos_id), real_tokens(targets, eos_id)], axis=1)
  j = jnp.arange(length)
  # sort key: by example, then input before target (the concatenation's order), padding last
  key = jnp.where(seg > 0, seg * length + j, (length + 1) * length + j)
  order = jnp.argsort(key, axis=1)
  take = lambda x: jnp.take_along_axis(x, order, axis=1)
  seg = take(seg)
  starts = jnp.concatenate([jnp.ones((b, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  first = jax.lax.cummax(jnp.where(starts, j, 0), axis=1)
  return {
    "tokens": take(tokens),
    "segment_ids": seg,
    "positions": (j - first).astype(jnp.int32),
    "answer": take(jnp.broadcast_to(j >= li, tokens.shape)) & (seg > 0),
  }


def prompts(inputs, eos_id: int, pad_id: int):
  """Right-padded input rows (b, L) -> (left-padded prompts, their 1/0 attention mask), the
  layout HF's decoder-only generate() takes."""
  length = inputs.shape[1]
  n = real_tokens(inputs, eos_id).sum(axis=1)
  src = jnp.arange(length)[None, :] - (length - n)[:, None]
  mask = src >= 0
  ids = jnp.take_along_axis(inputs, jnp.maximum(src, 0), axis=1)
  return jnp.where(mask, ids, pad_id), mask.astype(jnp.int32)
