"""Decode a split with a checkpoint and score it: ROUGE-1/2/L/Lsum (or BLEU) with bootstrap CIs
(the command line: wgqa_jax/tools/evaluate.py).

The checkpoint is anything wgqa_jax.store.resolve names: a training workdir (its best/ params,
falling back to final/), a params dir (inside a workdir or not), or a HF T5 / Llama directory
(a decoder-only model continues each prompt `[BOS] input EOS`, as it was trained). The run's
data settings (dataset, data_dir, tokenizer, lengths) come from its config.json, and the
generation settings from the checkpoint (its task_specific_params entry for the task, e.g.
t5-small's "summarization": 4 beams, length penalty 2.0, n-gram blocking 3, ...); explicit
arguments override both. The result is written whole, as JSON: {"scores": {metric: {"mean",
"ci95"}}, "predictions": [...], ...}.
"""

from __future__ import annotations

import os
import time

import jax

from wgqa_jax import decoding
from wgqa_jax.core import workdir as workdir_lib
from wgqa_jax.core.errors import UserError
from wgqa_jax.data import pipeline, tasks
from wgqa_jax.decoding.settings import GenerationConfig, for_task
from wgqa_jax.grouping import variants
from wgqa_jax.lab.checkpoint_tokenizer import open_tokenizer
from wgqa_jax.store.resolve import resolve
from wgqa_jax.training import metrics
from wgqa_jax.training.config import base_config


def generation_config(
  settings: dict, task: str, default_max: int, max_decode_length: int | None = None, **overrides
) -> GenerationConfig:
  """The checkpoint's settings for `task`, `overrides` (HF names) winning; max_new_tokens from
  max_decode_length, the settings' max_length, or the run's target length, in that order."""
  gen = for_task(settings, task, **overrides)
  known = {
    **settings.get("generation_config", {}),
    **settings.get("task_specific_params", {}).get(task, {}),
  }
  if max_decode_length:
    return gen.replace(max_new_tokens=max_decode_length)
  if not (known.get("max_new_tokens") or known.get("max_length")):
    return gen.replace(max_new_tokens=default_max)
  return gen


def default_out(checkpoint: str, path: str, in_workdir: bool, dataset: str, split: str) -> str:
  """A workdir's params (best/, final/): WORKDIR/evals/<params>_<dataset>_<split>.json, beside
  them (inside, a new best/ would take it away); another params or HF directory: in it,
  <dataset> and <split> in the name, so one evaluation does not replace another's."""
  name = f"{dataset}_{split}.json".replace(os.sep, "_")
  if in_workdir:
    workdir = os.path.dirname(os.path.abspath(path))
    return os.path.join(workdir, workdir_lib.EVALS, f"{os.path.basename(path)}_{name}")
  return os.path.join(path, f"eval_{name}")


def evaluate(
  checkpoint: str,
  split: str = "test",
  *,
  dataset: str | None = None,
  data_dir: str | None = None,
  tokenizer: str | None = None,
  num_examples: int | None = None,
  batch_size: int = 32,
  max_input_length: int | None = None,
  max_decode_length: int | None = None,
  seed: int = 0,
  fold: bool = False,
  bootstrap: int = 1000,
  generation: dict | None = None,
  out: str | None = None,
) -> tuple[dict, str]:
  """(the result, the path it was written to: `out`, else `default_out`)."""
  source = resolve(checkpoint)
  if not out and not os.path.exists(os.path.expanduser(checkpoint)):
    raise UserError(f"--checkpoint={checkpoint} is a hub id: pass --out (where to write)")
  run = source.run_config
  params, cfg = source.load()
  if fold:
    params, cfg = variants.fold(params, cfg)
  rd = {**base_config().data.to_dict(), **run.get("data", {})}  # the run's, else the defaults
  if rd.get("objective", "pairs") != "pairs" and not dataset:
    raise UserError(
      f"{checkpoint} was trained with data.objective={rd['objective']} on "
      f"{rd['dataset']}: its held-out loss and perplexity are in "
      f"{workdir_lib.METRICS}. evaluate decodes a task of pairs: pass "
      f"--dataset=TASK"
    )
  dataset = dataset or rd["dataset"]
  path = source.path
  tok = open_tokenizer(source, cfg, tokenizer)
  max_dec = max_decode_length or rd["max_target_length"]
  task = tasks.generation_task(dataset)
  gen = generation_config(
    source.generation_settings, task, max_dec, max_decode_length, **(generation or {})
  )
  split_data = pipeline.eval_split(
    tasks.source(dataset, split, num_examples, data_dir or rd["data_dir"]),
    tok,
    max_input_length or rd["max_input_length"],
    max_dec,
  )
  pairs = split_data.texts
  print(
    f"{path}: {cfg.grouping.describe(cfg.num_heads)} | {dataset} {split}: "
    f"{len(split_data)} examples"
  )
  changed = {k: v for k, v in gen.to_dict().items() if v != getattr(GenerationConfig(), k)}
  print(
    f"generation ({'the checkpoint' if source.generation_settings else 'defaults'}'s "
    f"settings for {task}, flags override): " + ", ".join(f"{k}={v}" for k, v in changed.items())
  )

  t0 = time.time()
  preds = decoding.predict(
    params, cfg, split_data, tok, batch_size, gen, desc="decode", rng=jax.random.PRNGKey(seed)
  )
  seconds = time.time() - t0
  refs = [t for _, t in pairs]
  scores = metrics.score(preds, refs, tasks.metric_of(dataset), bootstrap)
  result = {
    "checkpoint": os.path.abspath(path),
    "dataset": dataset,
    "split": split,
    "num_examples": len(preds),
    "generation": gen.to_dict(),
    "decode_seconds": seconds,
    "scores": scores,
    "predictions": preds,
    "references": refs,
    "inputs": [s for s, _ in pairs],
  }
  out_path = out or default_out(checkpoint, path, bool(run), dataset, split)
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  workdir_lib.write_json(out_path, result, indent=1)  # a kill while writing leaves no half
  return result, out_path
