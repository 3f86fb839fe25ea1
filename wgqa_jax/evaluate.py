"""Decode a split with a trained model and score it: ROUGE-1/2/L/Lsum (or BLEU) with bootstrap CIs.

    python -m wgqa_jax.evaluate --checkpoint=workdirs/tiny --split=test
    python -m wgqa_jax.evaluate --checkpoint=/tmp/wgqa_small/best --dataset=cnn_dailymail \
        --split=test --tokenizer=t5-small --num_beams=4 --out=/tmp/wgqa_small/test.json

--checkpoint is a training workdir (its best/ params, falling back to final/), a wgqa_jax params
dir (inside a workdir or not), or a HF T5 / Llama directory (a decoder-only model continues each
prompt `[BOS] input EOS`, as it was trained: wgqa_jax.causal_view). The run's data settings (dataset, data_dir,
tokenizer, lengths) come from its config.json, and the generation settings from the checkpoint
(its task_specific_params entry for the task, e.g. t5-small's "summarization": 4 beams, length
penalty 2.0, n-gram blocking 3, ...; printed); flags override both.
Writes JSON: {"scores": {metric: {"mean", "ci95"}}, "predictions": [...], ...}.
"""
from __future__ import annotations

import json
import os
import time

from absl import flags
import jax

from wgqa_jax import (cli, data, decoding, metrics, params_io, pipeline, tokenizers, variants,
                      workdir as workdir_lib)
from wgqa_jax.decoding import settings as generation_settings_file
from wgqa_jax.decoding.settings import GenerationConfig
from wgqa_jax.train_config import base_config

FLAGS = cli.flag_set()
_d = lambda name, default, help_: flags.DEFINE_string(name, default, help_, flag_values=FLAGS)
_i = lambda name, default, help_: flags.DEFINE_integer(name, default, help_, flag_values=FLAGS)
_d("checkpoint", None, "training workdir, wgqa_jax params dir or HF T5 / Llama directory")
_d("dataset", None, "default: the run's dataset")
_d("split", "test", "split to decode")
_d("data_dir", None, "TFDS data_dir (default: the run's)")
_d("tokenizer", None, "bytes | sentencepiece | HF tokenizer (default: the run's)")
_i("num_examples", None, "default: the whole split")
_i("batch_size", 32, "decoding batch")
_i("max_input_length", None, "default: the run's")
_i("max_decode_length", None, "max new tokens (default: the checkpoint's max_length - 1, else "
   "the run's max_target_length)")
_i("seed", 0, "sampling seed")
flags.DEFINE_bool("fold", False, "fold WGQA weights first (same outputs)", flag_values=FLAGS)
# Generation overrides (HF names); unset: the checkpoint's settings for the task.
_i("num_beams", None, "beams (1: greedy or sampling)")
_i("min_length", None, "HF min_length (counts the decoder start token)")
_i("min_new_tokens", None, "at least this many new tokens before EOS")
_i("no_repeat_ngram_size", None, "block repeated n-grams of this size")
_i("num_return_sequences", None, "sequences per input; the first is scored")
_i("top_k", None, "sampling: top-k")
for _name, _help in (("length_penalty", "beam length penalty"),
                     ("repetition_penalty", "HF repetition penalty"),
                     ("temperature", "sampling temperature"), ("top_p", "sampling: top-p")):
  flags.DEFINE_float(_name, None, _help, flag_values=FLAGS)
flags.DEFINE_enum("early_stopping", None, ["true", "false", "never"], "beam early stopping",
                  flag_values=FLAGS)
flags.DEFINE_bool("do_sample", None, "sample instead of greedy search", flag_values=FLAGS)
GENERATION_FLAGS = ("num_beams", "min_length", "min_new_tokens", "no_repeat_ngram_size",
                    "num_return_sequences", "top_k", "length_penalty", "repetition_penalty",
                    "temperature", "top_p", "early_stopping", "do_sample")
_i("bootstrap", 1000, "bootstrap resamples for the CIs")
_d("out", None, "JSON path (default: <checkpoint>/eval_<split>.json)")


def check_flags(a) -> None:
  """Every numeric flag in range and the output path writable, before anything is loaded or
  decoded (a bad value used to be ignored, or to fail after the whole decode)."""
  for name in ("num_examples", "batch_size", "max_input_length", "max_decode_length",
               "num_beams", "num_return_sequences", "top_k"):
    if a[name].value is not None and a[name].value <= 0:
      raise ValueError(f"--{name}={a[name].value}: must be positive")
  for name in ("min_length", "min_new_tokens", "no_repeat_ngram_size", "bootstrap"):
    if a[name].value is not None and a[name].value < 0:
      raise ValueError(f"--{name}={a[name].value}: must be >= 0")
  if a.temperature is not None and a.temperature <= 0:
    raise ValueError(f"--temperature={a.temperature}: must be positive")
  if a.top_p is not None and not 0 < a.top_p <= 1:
    raise ValueError(f"--top_p={a.top_p}: must be in (0, 1]")
  if a.out:
    if os.path.isdir(a.out):
      raise ValueError(f"--out={a.out} is a directory; pass a file path (e.g. {a.out}/eval.json)")
    parent = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(parent):
      raise ValueError(f"--out={a.out}: no directory {parent}")


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
  if any(os.path.exists(os.path.join(checkpoint, f))
         for f in ("metrics.jsonl", "checkpoints", "tokenizer.json", ".lock")):
    raise FileNotFoundError(f"{checkpoint} is a training workdir with no best/ or final/ yet: "
                            f"evaluate one of its params dirs once the run has written it")
  if os.path.exists(os.path.join(checkpoint, "config.json")):  # a HF directory
    return checkpoint, {}
  raise FileNotFoundError(f"{checkpoint} is neither a training workdir (best/ or final/), a "
                          f"wgqa_jax params dir nor a HF T5 / Llama directory")


def generation_config(a, settings: dict, task: str, default_max: int) -> GenerationConfig:
  """The checkpoint's settings for `task`, flags overriding; max_new_tokens from the flag, the
  settings' max_length, or the run's target length, in that order."""
  overrides = {name: a[name].value for name in GENERATION_FLAGS if a[name].value is not None}
  if "early_stopping" in overrides:
    overrides["early_stopping"] = {"true": True, "false": False}.get(
        overrides["early_stopping"], "never")
  gen = generation_settings_file.for_task(settings, task, **overrides)
  known = {**settings.get("generation_config", {}),
           **settings.get("task_specific_params", {}).get(task, {})}
  if a.max_decode_length:
    return gen.replace(max_new_tokens=a.max_decode_length)
  if not (known.get("max_new_tokens") or known.get("max_length")):
    return gen.replace(max_new_tokens=default_max)
  return gen


def main(argv: list[str] | None = None) -> int:
  a = cli.parse(FLAGS, argv, "wgqa_jax.evaluate")
  if not a.checkpoint:
    raise ValueError("pass --checkpoint=WORKDIR_OR_PARAMS_DIR")
  check_flags(a)
  path, run = resolve(a.checkpoint)
  params, cfg = params_io.load_any(path)
  if a.fold:
    params, cfg = variants.fold(params, cfg)
  rd = {**base_config().data.to_dict(), **run.get("data", {})}  # the run's, else the defaults
  dataset = a.dataset or rd["dataset"]
  if rd.get("objective", "pairs") != "pairs" and not a.dataset:
    raise ValueError(f"{a.checkpoint} was trained with data.objective={rd['objective']} on "
                     f"{rd['dataset']}: its held-out loss and perplexity are in metrics.jsonl. "
                     f"evaluate decodes a task of pairs: pass --dataset=TASK")
  workdir = os.path.dirname(os.path.abspath(path)) if run else path
  tokenizer = tokenizers.get_tokenizer(a.tokenizer or rd["tokenizer"], workdir)
  max_in = a.max_input_length or rd["max_input_length"]
  max_dec = a.max_decode_length or rd["max_target_length"]
  data_dir = a.data_dir or rd["data_dir"]
  settings = params_io.generation_settings_any(path)
  gen = generation_config(FLAGS, settings, data.generation_task(dataset), max_dec)
  split = pipeline.eval_split(data.source(dataset, a.split, a.num_examples, data_dir), tokenizer,
                              max_in, max_dec)
  pairs = split.texts
  print(f"{path}: {cfg.grouping.describe(cfg.num_heads)} | {dataset} {a.split}: {len(split)} "
        f"examples")
  changed = {k: v for k, v in gen.to_dict().items() if v != getattr(GenerationConfig(), k)}
  print(f"generation ({'the checkpoint' if settings else 'defaults'}'s settings for "
        f"{data.generation_task(dataset)}, flags override): "
        + ", ".join(f"{k}={v}" for k, v in changed.items()))

  t0 = time.time()
  preds = decoding.predict(params, cfg, split, tokenizer, a.batch_size, gen, desc="decode",
                  rng=jax.random.PRNGKey(a.seed))
  seconds = time.time() - t0
  refs = [t for _, t in pairs]
  scores = metrics.score(preds, refs, data.metric_of(dataset), a.bootstrap)
  result = {"checkpoint": os.path.abspath(path), "dataset": dataset, "split": a.split,
            "num_examples": len(preds), "generation": gen.to_dict(), "decode_seconds": seconds,
            "scores": scores, "predictions": preds, "references": refs,
            "inputs": [s for s, _ in pairs]}
  out_path = a.out or os.path.join(path, f"eval_{a.split}.json")
  workdir_lib.write_json(out_path, result, indent=1)  # a kill while writing leaves no half a result
  for k, v in scores.items():
    ci = f"  (95% CI {v['ci95'][0]:.2f} - {v['ci95'][1]:.2f})" if v["ci95"] else ""
    print(f"{k:>10}: {v['mean']:6.2f}{ci}")
  print(f"wrote {out_path}")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
