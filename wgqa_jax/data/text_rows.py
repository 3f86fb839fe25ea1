"""Training rows from documents (wgqa_jax.data.corpora), for the two pretraining objectives; grain
transforms that wgqa_jax.data.pipeline applies to each window of documents.

span_corruption (T5, seqio's `span_corruption`): documents tokenized without separators,
  concatenated, cut into chunks of `tokens_length` raw tokens (random_spans_helper: 568 for 512
  inputs), each chunk corrupted (wgqa_jax.data.span_corruption) into exactly 512 inputs / 114
  targets; the window's last, shorter chunk is corrupted too and padded. Rows: {inputs, targets}.

causal_lm (decoder-only): each document `[BOS] text EOS`, concatenated and cut into rows of
  `length` tokens (no padding but at a window's end); a document longer than a row continues in
  the next. Rows: {tokens, segment_ids, positions}. segment_ids number the document pieces of a
  row (1, 2, ...; 0 on padding) so attention and loss stay within a document, positions restart
  at 0 in each piece; with `cross_documents` a row is one segment (attention crosses document
  boundaries, positions 0..length-1), as GPT-style pretraining does.

Either way a window's rows are shuffled (with the window's own rng) so consecutive rows do not
come from one document; a row is a function of (seed, window): resumable, the same on any run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from wgqa_jax.core.errors import UserError
from wgqa_jax.data import span_corruption

OBJECTIVES = ("pairs", "span_corruption", "causal_lm")
# the model family each pretraining objective is for: is it a decoder-only (causal) one?
FOR_CAUSAL_MODELS = {"span_corruption": False, "causal_lm": True}


@dataclasses.dataclass(frozen=True)
class TokenizeDocument(grain.transforms.Map):
  """A document -> int32 ids; `delimit`: the tokenizer's prefix (BOS) first and EOS last."""

  tokenizer: Any
  delimit: bool

  def map(self, text):
    ids = self.tokenizer.encode(text)
    if self.delimit:
      ids = list(self.tokenizer.prefix) + list(ids) + [self.tokenizer.eos_id]
    return np.asarray(ids, np.int32)


def _stream(docs) -> np.ndarray:
  return np.concatenate(docs).astype(np.int32) if docs else np.zeros((0,), np.int32)


@dataclasses.dataclass(frozen=True)
class SpanCorruptionRows(grain.transforms.RandomMap):
  """A window (list) of tokenized documents -> {inputs (n, max_input_length), targets (n,
  max_target_length)}, pad-filled."""

  max_input_length: int
  max_target_length: int
  first_sentinel: int
  eos_id: int
  pad_id: int

  @property
  def tokens_length(self) -> int:
    return span_corruption.random_spans_helper(self.max_input_length)[0]

  def random_map(self, docs, rng: np.random.Generator) -> dict:
    stream, length = _stream(docs), self.tokens_length
    n = -(-len(stream) // length)
    inputs = np.full((n, self.max_input_length), self.pad_id, np.int32)
    targets = np.full((n, self.max_target_length), self.pad_id, np.int32)
    for r, start in enumerate(rng.permutation(n) * length):
      chunk = stream[start : start + length]
      mask = span_corruption.random_spans_noise_mask(len(chunk), rng)
      inp, tgt = span_corruption.corrupt(chunk, mask, self.first_sentinel, self.eos_id)
      inputs[r, : len(inp)], targets[r, : len(tgt)] = inp, tgt
    return {"inputs": inputs, "targets": targets}


def causal_rows(
  stream: np.ndarray, doc_ids: np.ndarray, length: int, pad_id: int, cross_documents: bool
) -> dict:
  """Concatenated documents (ids, and the document index of each id) -> rows of `length`."""
  n = -(-len(stream) // length)
  size = n * length
  tokens = np.full(size, pad_id, np.int32)
  tokens[: len(stream)] = stream
  real = np.arange(size) < len(stream)
  doc = np.where(real, np.concatenate([doc_ids, np.zeros(size - len(stream), np.int64)]), -1)
  doc, real = doc.reshape(n, length), real.reshape(n, length)
  if cross_documents:
    seg = real.astype(np.int32)
    pos = np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)).copy()
  else:
    starts = np.ones((n, length), bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    seg = np.where(real, np.cumsum(starts, axis=1), 0).astype(np.int32)
    j = np.arange(length)
    first = np.maximum.accumulate(np.where(starts, j, 0), axis=1)
    pos = np.where(real, j - first, 0).astype(np.int32)
  return {"tokens": tokens.reshape(n, length), "segment_ids": seg, "positions": pos}


@dataclasses.dataclass(frozen=True)
class CausalLMRows(grain.transforms.RandomMap):
  """A window (list) of delimited tokenized documents -> {tokens, segment_ids, positions}, each
  (n, length)."""

  length: int
  pad_id: int
  cross_documents: bool

  def random_map(self, docs, rng: np.random.Generator) -> dict:
    doc_ids = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    rows = causal_rows(_stream(docs), doc_ids, self.length, self.pad_id, self.cross_documents)
    order = rng.permutation(len(rows["tokens"]))
    return {k: v[order] for k, v in rows.items()}


def row_lengths(objective: str, max_input_length: int, max_target_length: int) -> dict:
  """Row length of each array the objective's rows hold (before packing features)."""
  if objective == "causal_lm":
    length = max_input_length + max_target_length
    return {"tokens": length, "segment_ids": length, "positions": length}
  return {"inputs": max_input_length, "targets": max_target_length}


def check_span_lengths(max_input_length: int, max_target_length: int) -> None:
  """The targets must hold what span corruption makes of a full row."""
  tokens_length, targets_length = span_corruption.random_spans_helper(max_input_length)
  if max_target_length < targets_length:
    raise UserError(
      f"config.data.max_target_length={max_target_length}: span corruption of "
      f"{max_input_length} inputs ({tokens_length} raw tokens per row) makes "
      f"{targets_length} targets; set max_target_length >= {targets_length} (T5: 512 / 114)"
    )
