"""Decode a split with a trained model and score it: ROUGE-1/2/L/Lsum (or BLEU) with bootstrap CIs.

    python -m wgqa_jax.evaluate --checkpoint=workdirs/tiny --split=test
    python -m wgqa_jax.evaluate --checkpoint=/tmp/wgqa_small/best --dataset=cnn_dailymail \
        --split=test --tokenizer=t5-small --num_beams=4 --out=/tmp/wgqa_small/test.json

--checkpoint is a training workdir (its best/ params, falling back to final/), a wgqa_jax params
dir (inside a workdir or not), or a HF T5 directory. The run's data settings (dataset, data_dir,
tokenizer, lengths) come from its config.json; flags override them.
Writes JSON: {"scores": {metric: {"mean", "ci95"}}, "predictions": [...], ...}.
"""
from __future__ import annotations

import json
import os
import time

from absl import flags
import numpy as np
from tqdm import tqdm

from wgqa_jax import cli, data, decode, metrics, params_io, sharding, variants
from wgqa_jax.train_config import base_config

FLAGS = cli.flag_set()
_d = lambda name, default, help_: flags.DEFINE_string(name, default, help_, flag_values=FLAGS)
_i = lambda name, default, help_: flags.DEFINE_integer(name, default, help_, flag_values=FLAGS)
_d("checkpoint", None, "training workdir, wgqa_jax params dir or HF T5 directory")
_d("dataset", None, "default: the run's dataset")
_d("split", "test", "split to decode")
_d("data_dir", None, "TFDS data_dir (default: the run's)")
_d("tokenizer", None, "bytes | sentencepiece | HF tokenizer (default: the run's)")
_i("num_examples", None, "default: the whole split")
_i("batch_size", 32, "decoding batch")
_i("max_input_length", None, "default: the run's")
_i("max_decode_length", None, "default: the run's max_target_length")
_i("num_beams", 1, "1: greedy")
flags.DEFINE_float("length_penalty", 1.0, "beam search length penalty", flag_values=FLAGS)
flags.DEFINE_bool("fold", False, "fold WGQA weights first (same outputs)", flag_values=FLAGS)
_i("bootstrap", 1000, "bootstrap resamples for the CIs")
_d("out", None, "JSON path (default: <checkpoint>/eval_<split>.json)")


def resolve(checkpoint: str) -> tuple[str, dict]:
  """(params dir or HF dir, the run's training config as a dict, or {})."""
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f"no such checkpoint: {checkpoint}")
  run_config = lambda workdir: (json.load(open(os.path.join(workdir, "config.json")))
                                if os.path.exists(os.path.join(workdir, "config.json")) else {})
  if params_io.is_params_dir(checkpoint):
    return checkpoint, run_config(os.path.dirname(os.path.abspath(checkpoint)))
  for sub in ("best", "final"):
    if params_io.is_params_dir(os.path.join(checkpoint, sub)):
      return os.path.join(checkpoint, sub), run_config(checkpoint)
  if os.path.exists(os.path.join(checkpoint, "config.json")):  # a HF directory
    return checkpoint, {}
  raise FileNotFoundError(f"{checkpoint} is neither a training workdir (best/ or final/), a "
                          f"wgqa_jax params dir nor a HF T5 directory")


def decode_batches(params, cfg, split, tokenizer, batch_size: int, max_len: int,
                   num_beams: int = 1, length_penalty: float = 1.0, mesh=None,
                   desc: str | None = None):
  """Yield (batch on devices, its detokenized predictions) over a tokenized split, in order
  (greedy, or beam search when num_beams > 1). The last batch is padded to batch_size; its
  padding rows get all-pad targets (they weigh nothing in a loss) and no prediction.

  mesh: place batches sharded over its data axis (train); desc: show a progress bar."""
  batches = data.eval_batches(split, batch_size)
  if desc:
    batches = tqdm(batches, desc=desc, total=-(-len(split) // batch_size), leave=False)
  for b in batches:
    valid = b.pop("valid")
    b["targets"] = np.where(valid[:, None], b["targets"], 0)
    if mesh is not None:
      b = sharding.put_batch(b, mesh)
    if num_beams > 1:
      out = decode.beam_search(params, b["inputs"], cfg, max_len, num_beams, length_penalty)
    else:
      out = decode.greedy(params, b["inputs"], cfg, max_len)
    yield b, [tokenizer.decode(r) for r, v in zip(sharding.to_host(out), valid) if v]


def predict(params, cfg, split, tokenizer, batch_size: int, max_len: int, num_beams: int = 1,
            length_penalty: float = 1.0, desc: str | None = None) -> list[str]:
  """Every example's prediction, in order."""
  return [p for _, texts in decode_batches(params, cfg, split, tokenizer, batch_size, max_len,
                                           num_beams, length_penalty, desc=desc) for p in texts]


def main(argv: list[str] | None = None) -> int:
  a = cli.parse(FLAGS, argv, "wgqa_jax.evaluate")
  if not a.checkpoint:
    raise ValueError("pass --checkpoint=WORKDIR_OR_PARAMS_DIR")
  path, run = resolve(a.checkpoint)
  params, cfg = params_io.load_any(path)
  if a.fold:
    params, cfg = variants.fold(params, cfg)
  rd = {**base_config().data.to_dict(), **run.get("data", {})}  # the run's, else the defaults
  dataset = a.dataset or rd["dataset"]
  workdir = os.path.dirname(os.path.abspath(path)) if run else path
  tokenizer = data.get_tokenizer(a.tokenizer or rd["tokenizer"], workdir)
  max_in = a.max_input_length or rd["max_input_length"]
  max_dec = a.max_decode_length or rd["max_target_length"]
  data_dir = a.data_dir or rd["data_dir"]
  pairs = data.load_examples(dataset, a.split, a.num_examples, 0, data_dir)
  split = data.tokenize(pairs, tokenizer, max_in, max_dec)
  print(f"{path}: {cfg.grouping.describe(cfg.num_heads)} | {dataset} {a.split}: {len(split)} "
        f"examples | beams={a.num_beams}")

  t0 = time.time()
  preds = predict(params, cfg, split, tokenizer, a.batch_size, max_dec, a.num_beams,
                  a.length_penalty, desc="decode")
  seconds = time.time() - t0
  refs = [t for _, t in pairs]
  scores = metrics.score(preds, refs, data.metric_of(dataset), a.bootstrap)
  result = {"checkpoint": os.path.abspath(path), "dataset": dataset, "split": a.split,
            "num_examples": len(preds), "num_beams": a.num_beams, "decode_seconds": seconds,
            "scores": scores, "predictions": preds, "references": refs,
            "inputs": [s for s, _ in pairs]}
  out_path = a.out or os.path.join(path, f"eval_{a.split}.json")
  with open(out_path, "w") as f:
    json.dump(result, f, indent=1)
  for k, v in scores.items():
    ci = f"  (95% CI {v['ci95'][0]:.2f} - {v['ci95'][1]:.2f})" if v["ci95"] else ""
    print(f"{k:>10}: {v['mean']:6.2f}{ci}")
  print(f"wrote {out_path}")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
