"""The search loops (wgqa_jax.decoding.search) equal to HF `generate()`: beam search in every
setting, the logits controls (min length, n-gram blocking, repetition penalty) inside both loops,
num_return_sequences; on padded batches of 54 rows of T5 models biased towards EOS so hypotheses
end at every length. (The decoder-only adapter is held to HF in test_decoding_llama.py.)"""

import itertools

import jax
import numpy as np
import pytest
from conftest import V10, V11, batch
from test_generate_t5 import converted

from wgqa_jax import decoding
from wgqa_jax.decoding import GenerationConfig, strip

ROWS = 54


def padded_batch(vocab, seed):
  ids, mask, _ = batch(vocab, b=ROWS, s=13, seed=seed)
  rng = np.random.RandomState(seed)
  for r in range(ROWS):  # every row its own length
    cut = rng.randint(3, 14)
    ids[r, cut:], mask[r, cut:] = 0, 0
  return ids, mask


def hf_generate(hf, ids, mask, **kw):
  import torch

  kw = {"do_sample": False, **kw}
  out = hf.generate(
    input_ids=torch.tensor(ids),
    attention_mask=torch.tensor(mask),
    decoder_start_token_id=0,
    use_cache=False,
    **kw,
  )
  return strip(out.numpy()[:, 1:])


@pytest.fixture(
  scope="module",
  params=[("v1.0", 3.0), ("v1.1", 3.0), ("v1.1", 6.0)],
  ids=["v1.0", "v1.1", "v1.1-eos-heavy"],
)
def model(request):
  version, boost = request.param
  return converted(V10 if version == "v1.0" else V11, boost)


def check(model, seed=3, **kw):
  hf, params, cfg = model
  ids, mask = padded_batch(cfg.vocab_size, seed)
  ours = strip(decoding.generate(params, cfg, ids, GenerationConfig(**kw)))
  defaults = GenerationConfig().to_dict()  # HF gets what is set, as a user would pass it
  theirs = hf_generate(
    hf,
    ids,
    mask,
    **{
      k: v
      for k, v in GenerationConfig(**kw).to_dict().items()
      if v != defaults[k] or k == "max_new_tokens"
    },
  )
  assert len(ours) == len(theirs) == ROWS * kw.get("num_return_sequences", 1)
  wrong = [r for r, (a, b) in enumerate(zip(ours, theirs)) if a != b]
  assert not wrong, (
    f"{len(wrong)} rows differ, e.g. row {wrong[0]}: {ours[wrong[0]]} vs {theirs[wrong[0]]}"
  )
  return ours


# ---------------------------------------------------------------- beam search vs HF ----
BEAM_GRID = list(itertools.product([2, 3, 4, 8], [0.6, 1.0, 2.0], [True, False, "never"], [6, 14]))


@pytest.mark.parametrize(
  "beams,alpha,early,max_new",
  [
    (4, 0.6, True, 14),
    (4, 2.0, False, 14),
    (3, 1.0, "never", 6),
    (8, 2.0, "never", 14),
    (2, 0.6, False, 6),
    (1, 1.0, False, 14),
  ],
)
def test_beam_search_equals_hf(model, beams, alpha, early, max_new):
  check(model, num_beams=beams, length_penalty=alpha, early_stopping=early, max_new_tokens=max_new)


@pytest.mark.slow
@pytest.mark.parametrize("beams,alpha,early,max_new", BEAM_GRID)
def test_beam_search_equals_hf_full_grid(model, beams, alpha, early, max_new):
  check(model, num_beams=beams, length_penalty=alpha, early_stopping=early, max_new_tokens=max_new)


def test_the_issue_case_an_eos_outside_the_top_k_does_not_finish():
  """4 beams, length penalty 0.6, a model that likes EOS: an EOS ranked beyond the top num_beams
  candidates must not end a hypothesis (HF); the old beam search returned short hypotheses HF
  never considers. Rows end at many lengths here, so both kinds of ending are exercised."""
  rows = check(
    converted(V11, 6.0), num_beams=4, length_penalty=0.6, early_stopping=False, max_new_tokens=12
  )
  assert len({len(r) for r in rows}) > 3 and any(len(r) == 12 for r in rows)


# ---------------------------------------------------------------- the controls vs HF ----
@pytest.mark.parametrize(
  "kw",
  [
    dict(min_length=6),
    dict(min_new_tokens=5),
    dict(min_length=8, min_new_tokens=3),
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=1),
    dict(repetition_penalty=1.5),
    dict(repetition_penalty=0.7),
    dict(
      num_beams=4,
      min_length=5,
      no_repeat_ngram_size=3,
      repetition_penalty=1.3,
      length_penalty=2.0,
      early_stopping=True,
    ),
    dict(num_beams=4, min_new_tokens=8, repetition_penalty=0.7),
    dict(num_beams=4, num_return_sequences=3, length_penalty=2.0, early_stopping="never"),
  ],
  ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_controls_equal_hf(model, kw):
  check(model, max_new_tokens=10, **kw)


def test_t5_small_summarization_settings_equal_hf(model):
  """t5-small's task_specific_params["summarization"] (max_length 200 scaled to this model)."""
  check(
    model,
    **GenerationConfig.from_hf(
      dict(
        early_stopping=True,
        length_penalty=2.0,
        max_length=16,
        min_length=6,
        no_repeat_ngram_size=3,
        num_beams=4,
      )
    ).to_dict(),
  )


def test_sampling_returns_several_sequences_per_input_and_is_seeded(model):
  _, params, cfg = model
  ids, _ = padded_batch(cfg.vocab_size, 7)
  gen = GenerationConfig(max_new_tokens=8, do_sample=True, num_return_sequences=3, top_k=0)
  a = np.asarray(decoding.generate(params, cfg, ids[:4], gen, jax.random.PRNGKey(1)))
  assert a.shape == (12, 8)
  np.testing.assert_array_equal(
    a, decoding.generate(params, cfg, ids[:4], gen, jax.random.PRNGKey(1))
  )
  assert len({tuple(r) for r in a[:3]}) > 1  # three draws for the first input
