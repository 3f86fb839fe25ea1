"""Generation equal to HF `generate()`: beam search in every setting, the logits controls (min
length, n-gram blocking, repetition penalty, sampling warpers), num_return_sequences; on padded
batches of 54 rows, with models biased towards EOS so hypotheses end at every length."""
import itertools

import jax
import numpy as np
import pytest

from conftest import V10, V11, batch
from test_decode import converted
from wgqa_jax import decode, generation
from wgqa_jax.generation import GenerationConfig

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
  out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    decoder_start_token_id=0, use_cache=False, **kw)
  return decode.strip(out.numpy()[:, 1:])


@pytest.fixture(scope="module", params=[("v1.0", 3.0), ("v1.1", 3.0), ("v1.1", 6.0)],
                ids=["v1.0", "v1.1", "v1.1-eos-heavy"])
def model(request):
  version, boost = request.param
  return converted(V10 if version == "v1.0" else V11, boost)


def check(model, seed=3, **kw):
  hf, params, cfg = model
  ids, mask = padded_batch(cfg.vocab_size, seed)
  ours = decode.strip(decode.generate(params, ids, cfg, GenerationConfig(**kw)))
  defaults = GenerationConfig().to_dict()  # HF gets what is set, as a user would pass it
  theirs = hf_generate(hf, ids, mask, **{k: v for k, v in GenerationConfig(**kw).to_dict().items()
                                         if v != defaults[k] or k == "max_new_tokens"})
  assert len(ours) == len(theirs) == ROWS * kw.get("num_return_sequences", 1)
  wrong = [r for r, (a, b) in enumerate(zip(ours, theirs)) if a != b]
  assert not wrong, f"{len(wrong)} rows differ, e.g. row {wrong[0]}: {ours[wrong[0]]} vs " \
                    f"{theirs[wrong[0]]}"
  return ours


# ---------------------------------------------------------------- beam search vs HF ----
BEAM_GRID = list(itertools.product([2, 3, 4, 8], [0.6, 1.0, 2.0], [True, False, "never"], [6, 14]))


@pytest.mark.parametrize("beams,alpha,early,max_new", [
    (4, 0.6, True, 14), (4, 2.0, False, 14), (3, 1.0, "never", 6), (8, 2.0, "never", 14),
    (2, 0.6, False, 6), (1, 1.0, False, 14)])
def test_beam_search_equals_hf(model, beams, alpha, early, max_new):
  check(model, num_beams=beams, length_penalty=alpha, early_stopping=early,
        max_new_tokens=max_new)


@pytest.mark.slow
@pytest.mark.parametrize("beams,alpha,early,max_new", BEAM_GRID)
def test_beam_search_equals_hf_full_grid(model, beams, alpha, early, max_new):
  check(model, num_beams=beams, length_penalty=alpha, early_stopping=early,
        max_new_tokens=max_new)


def test_the_issue_case_an_eos_outside_the_top_k_does_not_finish():
  """4 beams, length penalty 0.6, a model that likes EOS: an EOS ranked beyond the top num_beams
  candidates must not end a hypothesis (HF); the old beam search returned short hypotheses HF
  never considers. Rows end at many lengths here, so both kinds of ending are exercised."""
  rows = check(converted(V11, 6.0), num_beams=4, length_penalty=0.6, early_stopping=False,
               max_new_tokens=12)
  assert len({len(r) for r in rows}) > 3 and any(len(r) == 12 for r in rows)


# ---------------------------------------------------------------- the controls vs HF ----
@pytest.mark.parametrize("kw", [
    dict(min_length=6), dict(min_new_tokens=5), dict(min_length=8, min_new_tokens=3),
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=1), dict(repetition_penalty=1.5), dict(repetition_penalty=0.7),
    dict(num_beams=4, min_length=5, no_repeat_ngram_size=3, repetition_penalty=1.3,
         length_penalty=2.0, early_stopping=True),
    dict(num_beams=4, min_new_tokens=8, repetition_penalty=0.7),
    dict(num_beams=4, num_return_sequences=3, length_penalty=2.0, early_stopping="never"),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_controls_equal_hf(model, kw):
  check(model, max_new_tokens=10, **kw)


def test_t5_small_summarization_settings_equal_hf(model):
  """t5-small's task_specific_params["summarization"] (max_length 200 scaled to this model)."""
  check(model, **GenerationConfig.from_hf(dict(
      early_stopping=True, length_penalty=2.0, max_length=16, min_length=6,
      no_repeat_ngram_size=3, num_beams=4)).to_dict())


def hf_processors(hf, gen: GenerationConfig, sampling: bool):
  """HF's own processor list for these settings (its order)."""
  from transformers import GenerationConfig as HFGenerationConfig
  hgc = HFGenerationConfig(**{**gen.to_dict(), "do_sample": sampling}, eos_token_id=1,
                           pad_token_id=0, decoder_start_token_id=0)
  hf._prepare_special_tokens(hgc, device="cpu")
  return hf._get_logits_processor(generation_config=hgc, input_ids_seq_length=1,
                                  encoder_input_ids=None, device="cpu")


@pytest.mark.parametrize("kw", [
    dict(temperature=0.7, top_k=5), dict(top_p=0.8, top_k=0), dict(temperature=1.3, top_p=0.9),
    dict(repetition_penalty=1.4, no_repeat_ngram_size=2, min_length=4, min_new_tokens=3,
         temperature=0.8, top_k=20, top_p=0.95)],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
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
    got = np.asarray(generation.process_logits(jax.numpy.asarray(logits), tokens, seen, i, gen,
                                               1, 0, sampling=True))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"step {i}")
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-6)


def ref_banned(ids: list[int], n: int) -> set[int]:
  """Plain-python n-gram blocking: tokens that would repeat an n-gram of `ids`."""
  if len(ids) + 1 < n:
    return set()
  prefix = tuple(ids[len(ids) - n + 1:]) if n > 1 else ()
  return {ids[j + n - 1] for j in range(len(ids) - n + 1) if tuple(ids[j:j + n - 1]) == prefix}


def test_ngram_blocking_matches_a_numpy_reference():
  rng = np.random.default_rng(1)
  for n in (1, 2, 3, 4):
    tokens = rng.integers(2, 6, (8, 12)).astype(np.int32)
    for i in range(13):
      got = np.asarray(generation.banned_ngrams(jax.numpy.asarray(tokens), i, n, 0, 7))
      for r in range(8):
        want = ref_banned([0] + tokens[r, :i].tolist(), n)
        assert set(np.flatnonzero(got[r])) == want, (n, i, r)


def test_sampling_returns_several_sequences_per_input_and_is_seeded(model):
  _, params, cfg = model
  ids, _ = padded_batch(cfg.vocab_size, 7)
  gen = GenerationConfig(max_new_tokens=8, do_sample=True, num_return_sequences=3, top_k=0)
  a = np.asarray(decode.generate(params, ids[:4], cfg, gen, jax.random.PRNGKey(1)))
  assert a.shape == (12, 8)
  np.testing.assert_array_equal(a, decode.generate(params, ids[:4], cfg, gen,
                                                   jax.random.PRNGKey(1)))
  assert len({tuple(r) for r in a[:3]}) > 1  # three draws for the first input


def test_settings_from_hf_and_their_errors():
  tsp = {"summarization": dict(early_stopping=True, length_penalty=2.0, max_length=200,
                               min_length=30, no_repeat_ngram_size=3, num_beams=4,
                               prefix="summarize: ")}
  g = generation.for_task({"task_specific_params": tsp}, "summarization")
  assert (g.num_beams, g.max_new_tokens, g.min_length, g.length_penalty) == (4, 199, 30, 2.0)
  assert generation.for_task({"task_specific_params": tsp}, "translation") == GenerationConfig()
  assert generation.for_task({}, "summarization", num_beams=2).num_beams == 2
  with pytest.raises(ValueError, match="early_stopping"):
    GenerationConfig(early_stopping="sometimes")
  with pytest.raises(ValueError, match="num_return_sequences"):
    GenerationConfig(num_beams=2, num_return_sequences=3)
