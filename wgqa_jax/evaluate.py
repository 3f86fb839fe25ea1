"""Decode a split with a trained model and score it: ROUGE-1/2/L/Lsum (or BLEU) with bootstrap CIs.

    python -m wgqa_jax.evaluate --checkpoint=workdirs/tiny --split=test
    python -m wgqa_jax.evaluate --checkpoint=/tmp/wgqa_small/best --dataset=cnn_dailymail \
        --split=test --tokenizer=t5-small --num_beams=4 --out=/tmp/wgqa_small/test.json

--checkpoint is a training workdir (its best/ params, falling back to final/, and its config's
dataset, tokenizer and lengths), a wgqa_jax params dir, or a HF T5 directory.
Writes JSON: {"scores": {metric: {"mean", "ci95"}}, "predictions": [...], ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from wgqa_jax import convert, data, decode, metrics, sharding


def resolve(checkpoint: str) -> tuple[str, dict]:
  """(params dir or HF dir, training config dict or {})."""
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f"no such checkpoint: {checkpoint}")
  train_cfg_path = os.path.join(checkpoint, "config.json")
  if os.path.exists(os.path.join(checkpoint, convert.CONFIG_FILE)):
    parent = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.json")
    train_cfg = json.load(open(parent)) if os.path.exists(parent) else {}
    return checkpoint, train_cfg
  for sub in ("best", "final"):
    if os.path.exists(os.path.join(checkpoint, sub, convert.CONFIG_FILE)):
      train_cfg = json.load(open(train_cfg_path)) if os.path.exists(train_cfg_path) else {}
      return os.path.join(checkpoint, sub), train_cfg
  if os.path.exists(train_cfg_path):  # a HF directory
    return checkpoint, {}
  raise FileNotFoundError(f"{checkpoint} is neither a training workdir (best/ or final/), a "
                          f"wgqa_jax params dir nor a HF T5 directory")


def predict(params, cfg, split, tokenizer, batch_size: int, max_len: int, num_beams: int = 1,
            length_penalty: float = 1.0, put=None, on_batch=None, desc: str | None = None
            ) -> list[str]:
  """Decode every example of a tokenized split (greedy, or beam search when num_beams > 1) and
  detokenize, in order. The last batch is padded to batch_size; its padding rows get all-pad
  targets (so they weigh nothing in a loss) and are dropped from the predictions.

  put: places a host batch on devices (train passes its mesh's sharding); on_batch(batch) sees
  each placed batch first (train accumulates its eval loss there); desc: show a progress bar.
  """
  batches = data.eval_batches(split, batch_size)
  if desc:
    batches = tqdm(batches, desc=desc, total=-(-len(split) // batch_size), leave=False)
  preds: list[str] = []
  for b in batches:
    valid = b.pop("valid")
    b["targets"] = np.where(valid[:, None], b["targets"], 0)
    if put is not None:
      b = put(b)
    if on_batch is not None:
      on_batch(b)
    if num_beams > 1:
      out = decode.beam_search(params, b["inputs"], cfg, max_len, num_beams, length_penalty)
    else:
      out = decode.greedy(params, b["inputs"], cfg, max_len)
    preds += [tokenizer.decode(r) for r, v in zip(sharding.to_host(out), valid) if v]
  return preds


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m wgqa_jax.evaluate", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--checkpoint", required=True)
  ap.add_argument("--dataset", default=None, help="default: the training config's dataset")
  ap.add_argument("--split", default="test")
  ap.add_argument("--data_dir", default=None)
  ap.add_argument("--tokenizer", default=None, help="bytes | sentencepiece | HF tokenizer")
  ap.add_argument("--num_examples", type=int, default=None)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--max_input_length", type=int, default=None)
  ap.add_argument("--max_decode_length", type=int, default=None)
  ap.add_argument("--num_beams", type=int, default=1)
  ap.add_argument("--length_penalty", type=float, default=1.0)
  ap.add_argument("--fold", action="store_true", help="fold WGQA weights first (same outputs)")
  ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
  ap.add_argument("--out", default=None, help="JSON path (default: <checkpoint>/eval_<split>.json)")
  args = ap.parse_args(argv)

  path, tc = resolve(args.checkpoint)
  if os.path.exists(os.path.join(path, convert.CONFIG_FILE)):
    params, cfg = convert.load(path)
  else:
    params, cfg = convert.from_hf(path)
  if args.fold:
    params, cfg = convert.fold(params, cfg)
  dataset = args.dataset or tc.get("dataset", "synthetic_summarize")
  tok_name = args.tokenizer or tc.get("tokenizer", "bytes")
  workdir = os.path.dirname(os.path.abspath(path)) if tc else path
  tokenizer = data.get_tokenizer(tok_name, workdir)
  max_in = args.max_input_length or tc.get("max_input_length", 512)
  max_dec = args.max_decode_length or tc.get("max_target_length", 256)
  pairs = data.load_examples(dataset, args.split, args.num_examples, 0, args.data_dir)
  split = data.tokenize(pairs, tokenizer, max_in, max_dec)
  print(f"{path}: {cfg.num_heads} heads / {cfg.kv_heads} KV heads, wgqa={cfg.wgqa} | {dataset} "
        f"{args.split}: {len(split)} examples | beams={args.num_beams}")

  t0 = time.time()
  preds = predict(params, cfg, split, tokenizer, args.batch_size, max_dec, args.num_beams,
                  args.length_penalty, desc="decode")
  seconds = time.time() - t0
  refs = [t for _, t in pairs]
  task = "translation" if data.is_translation(dataset) else "summarization"
  scores = metrics.score(preds, refs, task, args.bootstrap)
  result = {"checkpoint": os.path.abspath(path), "dataset": dataset, "split": args.split,
            "num_examples": len(preds), "num_beams": args.num_beams, "decode_seconds": seconds,
            "scores": scores, "predictions": preds, "references": refs,
            "inputs": [s for s, _ in pairs]}
  out_path = args.out or os.path.join(path, f"eval_{args.split}.json")
  with open(out_path, "w") as f:
    json.dump(result, f, indent=1)
  for k, v in scores.items():
    print(f"{k:>10}: {v['mean']:6.2f}  (95% CI {v['ci95'][0]:.2f} - {v['ci95'][1]:.2f})")
  print(f"wrote {out_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
