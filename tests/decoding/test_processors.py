"""The logits processors (wgqa_jax.decoding.processors) against HF's own processor list and a
plain-python n-gram reference: sampling draws differ between RNGs, so what is compared is what
is sampled from."""

import jax
import numpy as np
import pytest
from conftest import V11
from test_generate_t5 import converted

from wgqa_jax.decoding import GenerationConfig, processors


def hf_processors(hf, gen: GenerationConfig, sampling: bool):
  """HF's own processor list for these settings (its order)."""
  from transformers import GenerationConfig as HFGenerationConfig

  hgc = HFGenerationConfig(
    **{**gen.to_dict(), "do_sample": sampling},
    eos_token_id=1,
    pad_token_id=0,
    decoder_start_token_id=0,
  )
  hf._prepare_special_tokens(hgc, device="cpu")
  return hf._get_logits_processor(
    generation_config=hgc, input_ids_seq_length=1, encoder_input_ids=None, device="cpu"
  )


@pytest.mark.parametrize(
  "kw",
  [
    dict(temperature=0.7, top_k=5),
    dict(top_p=0.8, top_k=0),
    dict(temperature=1.3, top_p=0.9),
    dict(
      repetition_penalty=1.4,
      no_repeat_ngram_size=2,
      min_length=4,
      min_new_tokens=3,
      temperature=0.8,
      top_k=20,
      top_p=0.95,
    ),
  ],
  ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_sampling_distribution_equals_hf(kw):
  """Sampling draws differ between RNGs, so compare what is sampled from: the processed logits
  (and so the softmax) at several steps of random prefixes."""
  import torch

  hf, _, _ = converted(V11)
  gen = GenerationConfig(do_sample=True, **kw)
  procs = hf_processors(hf, gen, sampling=True)
  rng = np.random.default_rng(0)
  vocab, rows, length = 40, 6, 9
  for i in (0, 1, 3, 8):
    tokens = rng.integers(0, 6, (rows, length)).astype(np.int32)  # small alphabet: repeats
    logits = rng.standard_normal((rows, vocab)).astype(np.float32) * 3
    ids = np.concatenate([np.zeros((rows, 1), np.int64), tokens[:, :i]], 1)
    want = procs(torch.tensor(ids), torch.tensor(logits)).numpy()
    seen = np.zeros((rows, vocab), bool)
    for r in range(rows):
      seen[r, ids[r]] = True
    got = np.asarray(
      processors.process_logits(
        jax.numpy.asarray(logits), tokens, seen, i, gen, 1, 0, sampling=True
      )
    )
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"step {i}")
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-6)


def ref_banned(ids: list[int], n: int) -> set[int]:
  """Plain-python n-gram blocking: tokens that would repeat an n-gram of `ids`."""
  if len(ids) + 1 < n:
    return set()
  prefix = tuple(ids[len(ids) - n + 1 :]) if n > 1 else ()
  return {ids[j + n - 1] for j in range(len(ids) - n + 1) if tuple(ids[j : j + n - 1]) == prefix}


def test_ngram_blocking_matches_a_numpy_reference():
  rng = np.random.default_rng(1)
  for n in (1, 2, 3, 4):
    tokens = rng.integers(2, 6, (8, 12)).astype(np.int32)
    for i in range(13):
      got = np.asarray(processors.banned_ngrams(jax.numpy.asarray(tokens), i, n, 0, 7))
      for r in range(8):
        want = ref_banned([0] + tokens[r, :i].tolist(), n)
        assert set(np.flatnonzero(got[r])) == want, (n, i, r)
