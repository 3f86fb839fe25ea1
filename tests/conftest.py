"""Shared fixtures: tiny random HF T5 checkpoints built offline with transformers."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Most tests compile the same tiny programs (in this process, the other xdist worker and the
# command lines they start): XLA's persistent cache, keyed by the program, compiles each once.
# A third less suite time on 2 cores; a stale entry cannot match another program.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(tempfile.gettempdir(), f"wgqa_jax_test_xla_cache_{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, "-m", "wgqa_jax.train"]
# a training subprocess sees one CPU device, as a user's run does (not the tests' 8 fake ones)
TRAIN_ENV = {**os.environ, "XLA_FLAGS": ""}

# Tiny architectures that exercise the awkward cases: d_kv * H != d_model, unequal depths.
V10 = dict(
  vocab_size=97,
  d_model=32,
  d_kv=12,
  d_ff=48,
  num_layers=2,
  num_decoder_layers=3,
  num_heads=4,
  feed_forward_proj="relu",
  tie_word_embeddings=True,
  dropout_rate=0.0,
)
V11 = dict(
  vocab_size=101,
  d_model=24,
  d_kv=8,
  d_ff=40,
  num_layers=3,
  num_decoder_layers=2,
  num_heads=6,
  feed_forward_proj="gated-gelu",
  tie_word_embeddings=False,
  dropout_rate=0.0,
)


def make_hf_model(spec: dict, seed: int = 0):
  import torch
  from transformers import T5Config, T5ForConditionalGeneration

  torch.manual_seed(seed)
  model = T5ForConditionalGeneration(T5Config(**spec)).eval()
  if not spec["tie_word_embeddings"]:
    # transformers 5.x ties a randomly initialised v1.1 model's lm_head: untie it by hand.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(spec["vocab_size"], spec["d_model"]))
  # Make the relative-position tables and norms non-trivial so the tests can see them.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return model


@pytest.fixture(scope="session", params=["v1.0", "v1.1"])
def hf_checkpoint(request, tmp_path_factory):
  """(torch model, local checkpoint dir) for T5 v1.0 and v1.1."""
  spec = V10 if request.param == "v1.0" else V11
  model = make_hf_model(spec)
  path = tmp_path_factory.mktemp(f"hf_{request.param}")
  model.save_pretrained(str(path))
  return model, str(path)


def hf_logits(model, ids, dec, mask=None, dec_mask=None):
  import torch

  t = lambda x: None if x is None else torch.tensor(np.asarray(x))
  with torch.no_grad():
    return model(
      input_ids=t(ids),
      attention_mask=t(mask),
      decoder_input_ids=t(dec),
      decoder_attention_mask=t(dec_mask),
    ).logits.numpy()


def batch(vocab: int, b: int = 3, s: int = 13, t: int = 9, seed: int = 0):
  """Random encoder ids (with a padded row), decoder ids and masks."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(2, vocab, (b, s))
  mask = np.ones((b, s), np.int32)
  mask[1, s - 4 :] = 0
  ids[1, s - 4 :] = 0
  dec = rng.randint(2, vocab, (b, t))
  return ids, mask, dec


SMALL = {"train": 120, "validation": 10, "test": 10}


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A TFDS data_dir holding every built-in dataset shape, built by the real builders."""
  from wgqa_jax.data import local_tfds

  d = str(tmp_path_factory.mktemp("tfds"))
  for name in local_tfds.SHAPES:
    local_tfds.build(name, d, SMALL)
  return d


# ---- `python -m wgqa_jax.train` as a real process: to the end, or in the background ----
def run_train(*args, timeout=300):
  return subprocess.run(
    [*TRAIN, *args], cwd=REPO, env=TRAIN_ENV, capture_output=True, text=True, timeout=timeout
  )


def start_train(*args, **popen_kw):
  """A training process in the background (output discarded unless popen_kw says otherwise)."""
  popen_kw = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **popen_kw}
  return subprocess.Popen([*TRAIN, *args], cwd=REPO, env=TRAIN_ENV, **popen_kw)


def wait_until(ready, seconds: float, poll: float = 0.05) -> None:
  """Poll ready() until it is true or `seconds` have passed (the caller asserts what it needs)."""
  deadline = time.time() + seconds
  while time.time() < deadline and not ready():
    time.sleep(poll)
