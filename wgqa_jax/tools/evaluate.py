"""python -m wgqa_jax.evaluate: decode a split with a trained model and score it:
ROUGE-1/2/L/Lsum (or BLEU) with bootstrap CIs (the library: wgqa_jax.lab.evaluate).

    python -m wgqa_jax.evaluate --checkpoint=workdirs/tiny --split=test
    python -m wgqa_jax.evaluate --checkpoint=/tmp/wgqa_small/best --dataset=cnn_dailymail \
        --split=test --tokenizer=t5-small --num_beams=4 --out=/tmp/wgqa_small/test.json

--checkpoint is a training workdir (its best/ params, falling back to final/), a wgqa_jax params
dir (inside a workdir or not), or a HF T5 / Llama directory (a decoder-only model continues each
prompt `[BOS] input EOS`, as it was trained). The run's data settings (dataset, data_dir,
tokenizer, lengths) come from its config.json, and the generation settings from the checkpoint
(its task_specific_params entry for the task, e.g. t5-small's "summarization": 4 beams, length
penalty 2.0, n-gram blocking 3, ...; printed); flags override both.
Writes JSON: {"scores": {metric: {"mean", "ci95"}}, "predictions": [...], ...}.
"""

from __future__ import annotations

import os

from absl import flags

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.lab import evaluate

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
_i(
  "max_decode_length",
  None,
  "max new tokens (default: the checkpoint's max_length - 1, else the run's max_target_length)",
)
_i("seed", 0, "sampling seed")
flags.DEFINE_bool("fold", False, "fold WGQA weights first (same outputs)", flag_values=FLAGS)
# Generation overrides (HF names); unset: the checkpoint's settings for the task.
_i("num_beams", None, "beams (1: greedy or sampling)")
_i("min_length", None, "HF min_length (counts the decoder start token)")
_i("min_new_tokens", None, "at least this many new tokens before EOS")
_i("no_repeat_ngram_size", None, "block repeated n-grams of this size")
_i("num_return_sequences", None, "sequences per input; the first is scored")
_i("top_k", None, "sampling: top-k")
for _name, _help in (
  ("length_penalty", "beam length penalty"),
  ("repetition_penalty", "HF repetition penalty"),
  ("temperature", "sampling temperature"),
  ("top_p", "sampling: top-p"),
):
  flags.DEFINE_float(_name, None, _help, flag_values=FLAGS)
flags.DEFINE_enum(
  "early_stopping", None, ["true", "false", "never"], "beam early stopping", flag_values=FLAGS
)
flags.DEFINE_bool("do_sample", None, "sample instead of greedy search", flag_values=FLAGS)
GENERATION_FLAGS = (
  "num_beams",
  "min_length",
  "min_new_tokens",
  "no_repeat_ngram_size",
  "num_return_sequences",
  "top_k",
  "length_penalty",
  "repetition_penalty",
  "temperature",
  "top_p",
  "early_stopping",
  "do_sample",
)
_i("bootstrap", 1000, "bootstrap resamples for the CIs")
_d(
  "out",
  None,
  "JSON path (default: WORKDIR/evals/<best|final>_<dataset>_<split>.json for a run, else "
  "<checkpoint>/eval_<dataset>_<split>.json; a hub id needs it)",
)


def check_flags(a) -> None:
  """Every numeric flag in range and the output path writable, before anything is loaded or
  decoded (a bad value used to be ignored, or to fail after the whole decode)."""
  for name in (
    "num_examples",
    "batch_size",
    "max_input_length",
    "max_decode_length",
    "num_beams",
    "num_return_sequences",
    "top_k",
  ):
    if a[name].value is not None and a[name].value <= 0:
      raise UserError(f"--{name}={a[name].value}: must be positive")
  for name in ("min_length", "min_new_tokens", "no_repeat_ngram_size", "bootstrap"):
    if a[name].value is not None and a[name].value < 0:
      raise UserError(f"--{name}={a[name].value}: must be >= 0")
  if a.temperature is not None and a.temperature <= 0:
    raise UserError(f"--temperature={a.temperature}: must be positive")
  if a.top_p is not None and not 0 < a.top_p <= 1:
    raise UserError(f"--top_p={a.top_p}: must be in (0, 1]")
  if a.out:
    if os.path.isdir(a.out):
      raise UserError(f"--out={a.out} is a directory; pass a file path (e.g. {a.out}/eval.json)")
    parent = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(parent):
      raise UserError(f"--out={a.out}: no directory {parent}")


def main(argv: list[str] | None = None) -> int:
  a = cli.parse(FLAGS, argv, "wgqa_jax.evaluate")
  if not a.checkpoint:
    raise UserError("pass --checkpoint=WORKDIR_OR_PARAMS_DIR")
  check_flags(a)
  overrides = {name: a[name].value for name in GENERATION_FLAGS if a[name].value is not None}
  if "early_stopping" in overrides:
    overrides["early_stopping"] = {"true": True, "false": False}.get(
      overrides["early_stopping"], "never"
    )
  result, out_path = evaluate.evaluate(
    a.checkpoint,
    a.split,
    dataset=a.dataset,
    data_dir=a.data_dir,
    tokenizer=a.tokenizer,
    num_examples=a.num_examples,
    batch_size=a.batch_size,
    max_input_length=a.max_input_length,
    max_decode_length=a.max_decode_length,
    seed=a.seed,
    fold=a.fold,
    bootstrap=a.bootstrap,
    generation=overrides,
    out=a.out,
  )
  for k, v in result["scores"].items():
    ci = f"  (95% CI {v['ci95'][0]:.2f} - {v['ci95'][1]:.2f})" if v["ci95"] else ""
    print(f"{k:>10}: {v['mean']:6.2f}{ci}")
  print(f"wrote {out_path}")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
