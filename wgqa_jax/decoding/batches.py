"""Decoding a tokenized split batch by batch, on the host side of generation: what train's eval
and `python -m wgqa_jax.evaluate` share."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from wgqa_jax.core import sharding
from wgqa_jax.data import pipeline
from wgqa_jax.decoding.search import generate
from wgqa_jax.decoding.settings import GenerationConfig


def decode_batches(
  params,
  cfg,
  split,
  tokenizer,
  batch_size: int,
  gen: GenerationConfig,
  mesh=None,
  desc: str | None = None,
  rng=None,
):
  """Yield (batch on devices, its detokenized predictions) over a tokenized split, in order,
  decoded as `gen` says (the first of num_return_sequences per input). The last batch is padded
  to batch_size; its padding rows get all-pad targets (they weigh nothing in a loss) and no
  prediction.

  mesh: place batches sharded over its data axis (train); desc: show a progress bar."""
  batches = pipeline.eval_batches(split, batch_size)
  if desc:
    batches = tqdm(batches, desc=desc, total=-(-len(split) // batch_size), leave=False)
  for b in batches:
    valid = b.pop("valid")
    b["targets"] = np.where(valid[:, None], b["targets"], 0)
    if mesh is not None:
      b = sharding.put_batch(b, mesh)
    out = generate(params, cfg, b["inputs"], gen, rng)
    rows = sharding.to_host(out)[:: gen.num_return_sequences]
    yield b, [tokenizer.decode(r) for r, v in zip(rows, valid) if v]


def predict(
  params,
  cfg,
  split,
  tokenizer,
  batch_size: int,
  gen: GenerationConfig,
  desc: str | None = None,
  rng=None,
) -> list[str]:
  """Every example's prediction, in order."""
  return [
    p
    for _, texts in decode_batches(
      params, cfg, split, tokenizer, batch_size, gen, desc=desc, rng=rng
    )
    for p in texts
  ]


def strip(ids, eos_id: int = 1) -> list[list[int]]:
  """Rows of ids up to and including the first EOS (pad removed)."""
  out = []
  for row in np.asarray(ids).tolist():
    out.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
  return out
