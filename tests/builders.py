"""What the tests build small, for real: tiny training configs (`tiny`), a tiny T5 and a batch,
the synthetic task's pipeline rows; and a run's train losses by step."""

import json
import os

import jax
import numpy as np

from wgqa_jax.data import pipeline, tasks, tokenizers
from wgqa_jax.training.config import base_config


def tiny(**kw):
  """A short run on the built-in task; kw are dotted keys ("optim.num_train_steps") or the last
  part of one when that is unambiguous ("num_train_steps")."""
  c = base_config()
  c.update_from_flattened_dict(
    {
      "data.max_input_length": 64,
      "data.max_target_length": 24,
      "data.train_examples": 256,
      "optim.batch_size": 8,
      "optim.num_epochs": 0,
      "optim.num_train_steps": 20,
      "optim.learning_rate": 3e-3,
      "optim.warmup_steps": 5,
      "log_every": 5,
      "eval.every": 0,
      "eval.examples": 8,
      "eval.batch_size": 8,
      "eval.max_decode_length": 8,
      "checkpoint.every": 10,
      "mesh.data": 1,
      "mesh.model": 1,
      "data.workers": 0,
    }
  )
  c.update_from_flattened_dict({dotted(c, k): v for k, v in kw.items()})
  return c


def proxy_budget(**kw):
  """A tiny run whose KV heads are spread over its modules by calibration error
  (grouping.layer_budget=proxy, svd merges, 8 heads so the G can differ)."""
  return tiny(
    **{
      "model.arch": "tiny-8head",
      "grouping.variant": "svd",
      "grouping.kv_heads": 2,
      "grouping.layer_budget": "proxy",
      "grouping.calibration_batches": 2,
      **kw,
    }
  )


def dotted(c, key: str) -> str:
  from wgqa_jax.training.config import keys

  if "." in key:
    return key
  match = [k for k in keys(c) if k.rpartition(".")[2] == key]
  assert len(match) == 1, (key, match)
  return match[0]


def losses(workdir):
  recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["train/loss"] for r in recs if "train/loss" in r}


def tiny_model_and_batch():
  from wgqa_jax.models import t5
  from wgqa_jax.models.t5.config import preset

  cfg = preset("tiny", vocab_size=64, num_encoder_layers=1, num_decoder_layers=1)
  params = t5.init_params(cfg, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = {
    "inputs": rng.integers(2, 64, (2, 7)).astype(np.int32),
    "targets": np.concatenate([rng.integers(2, 64, (2, 4)), np.zeros((2, 2))], 1).astype(np.int32),
  }
  return cfg, params, batch


def rows_of(n=12, li=160, lt=96):
  """(examples, padded rows, packed rows) of the synthetic task, byte-tokenized."""
  tok = tokenizers.ByteTokenizer()
  examples = [
    pipeline.Tokenize(tok, li, lt).map(p) for p in tasks.source("synthetic_translate", "train", n)
  ]
  padded = pipeline.pad_rows(examples, li, lt, tok.pad_id)
  packed = pipeline.pack_rows(examples, li, lt, tok.pad_id)
  assert packed["inputs_segment_ids"].max() >= 2  # rows really hold several examples
  return examples, padded, packed
