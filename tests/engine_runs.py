"""What the serving-engine tests (tests/engines/) share: a tiny model trained for a few seconds
by the real trainer, its variants saved as params dirs of that run (so that an export's
tokenizer is the run's), its calibration statistics (for the calibrated variants), and the
commands users run: our convert, CTranslate2's converter. The harness tests use them too."""

import json
import subprocess
import sys

import numpy as np
from conftest import REPO, run_train

from wgqa_jax.core import workdir as workdir_lib
from wgqa_jax.data import tasks, tokenizers
from wgqa_jax.store import params_io
from wgqa_jax.training import calibration


def train_tiny(tmp_path_factory, config: str, steps: int, *overrides: str):
  """(workdir, params, model config, tokenizer) of an MHA model trained for `steps` steps."""
  wd = tmp_path_factory.mktemp("run") / "run"
  r = run_train(
    f"--config={config}",
    f"--workdir={wd}",
    "--config.grouping.variant=mha",
    f"--config.optim.num_train_steps={steps}",
    "--config.eval.every=0",
    f"--config.checkpoint.every={steps}",
    *overrides,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  params, cfg = params_io.load(str(wd / workdir_lib.FINAL))
  return wd, params, cfg, tokenizers.get_tokenizer(str(wd / workdir_lib.SPM_MODEL))


def trained_and_exported(tmp_path_factory, config: str, steps: int):
  """(workdir, params, model config, tokenizer, its HF export) of a tiny trained MHA model."""
  wd, params, cfg, tok = train_tiny(tmp_path_factory, config, steps)
  hf = tmp_path_factory.mktemp("hf") / "export"
  convert(f"--params={wd / 'final'}", "--export=hf", f"--export_to={hf}")
  return wd, params, cfg, tok, str(hf)


def calibration_stats(params, cfg, tok):
  """A decoder-only MHA model's calibration statistics on 8 training documents (one batch)."""
  texts = [doc for doc, _ in tasks.source("synthetic_summarize", "train", 8)]
  ids = np.zeros((8, 64), np.int32)
  for i, t in enumerate(texts):
    row = tok.encode(t)[:64]
    ids[i, : len(row)] = row
  rows = {
    "tokens": ids,
    "segment_ids": (ids > 0).astype(np.int32),
    "positions": np.tile(np.arange(64), (8, 1)).astype(np.int32),
  }
  return calibration.collect(params, cfg, iter([rows]), 1, desc=None)


def convert(*args: str, code: int = 0, timeout: int = 600):
  """`python -m wgqa_jax.convert ARGS`, expected to exit with `code`."""
  r = subprocess.run(
    [sys.executable, "-m", "wgqa_jax.convert", *args],
    cwd=REPO, capture_output=True, text=True, timeout=timeout,
  )  # fmt: skip
  assert r.returncode == code, r.stderr[-3000:]
  return r


def export(wd, name: str, params, cfg, fmt: str, out, *args: str) -> str:
  """Save a variant as a params dir of the run, then export it as users do."""
  params_io.save(params, cfg, str(wd / name))
  convert(f"--params={wd / name}", f"--export={fmt}", f"--export_to={out}", *args)
  return str(out)


def ct2_convert(hf_dir, out, vocabulary: str):
  """CTranslate2's own converter on our HF export, as users run it; (its model dir, its
  vocabulary: ours, padded to the embedding's size with unique strings)."""
  r = subprocess.run(
    ["ct2-transformers-converter", f"--model={hf_dir}", f"--output_dir={out}"],
    capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  return str(out), json.loads((out / vocabulary).read_text())
