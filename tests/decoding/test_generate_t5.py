"""T5 through the decoding package (wgqa_jax.models.t5.decoding): KV-cached decoding equals uncached
decoding and HF generate, and caches only G heads."""

import jax
import numpy as np
import pytest
from conftest import V10, V11, batch, make_hf_model
from references import greedy_uncached

from wgqa_jax import decoding
from wgqa_jax.decoding import GenerationConfig, search, strip
from wgqa_jax.grouping import variants
from wgqa_jax.models import t5
from wgqa_jax.models.t5 import decoding as t5_decoding
from wgqa_jax.store import hf as hf_io


def converted(spec, eos_boost=3.0):
  """A tiny HF model whose EOS logit is boosted so sequences really end, and our params of it."""
  import torch

  hf = make_hf_model(spec)
  with torch.no_grad():
    head = hf.lm_head.weight if not spec["tie_word_embeddings"] else None
    if head is not None:
      head[1] *= eos_boost
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  cfg = hf_io.config_from_hf(hf.config.to_dict(), sd)
  return hf, hf_io.hf_to_params(sd, cfg), cfg


def greedy(params, cfg, ids, max_new_tokens):
  return decoding.generate(params, cfg, ids, GenerationConfig(max_new_tokens=max_new_tokens))


def hf_generate(hf, ids, mask, max_len, **kw):
  import torch

  # use_cache=False: transformers sizes its cache by the encoder depth, and these tiny models
  # have unequal encoder/decoder depths on purpose.
  out = hf.generate(
    input_ids=torch.tensor(ids),
    attention_mask=torch.tensor(mask),
    max_new_tokens=max_len,
    do_sample=False,
    min_length=0,
    decoder_start_token_id=0,
    use_cache=False,
    **kw,
  )
  return strip(out.numpy()[:, 1:])


@pytest.fixture(scope="module", params=["v1.0", "v1.1"])
def tiny(request):
  return converted(V10 if request.param == "v1.0" else V11)


def test_greedy_equals_hf_generate(tiny):
  hf, params, cfg = tiny
  ids, mask, _ = batch(cfg.vocab_size, b=4, s=13)
  ours = strip(greedy(params, cfg, ids, 12))
  assert ours == hf_generate(hf, ids, mask, 12, num_beams=1)


@pytest.mark.parametrize("beams,alpha", [(2, 1.0), (4, 1.0), (3, 0.6)])
def test_beam_search_equals_hf_generate(tiny, beams, alpha):
  hf, params, cfg = tiny
  ids, mask, _ = batch(cfg.vocab_size, b=4, s=13, seed=1)
  ours = strip(
    decoding.generate(
      params, cfg, ids, GenerationConfig(max_new_tokens=10, num_beams=beams, length_penalty=alpha)
    )
  )
  assert ours == hf_generate(
    hf, ids, mask, 10, num_beams=beams, length_penalty=alpha, early_stopping=False
  )


def test_some_sequences_end_early_so_eos_handling_is_exercised():
  _, params, cfg = converted(V11)
  ids, _, _ = batch(cfg.vocab_size, b=4, s=13)
  rows = strip(greedy(params, cfg, ids, 12))
  assert any(r[-1] == cfg.eos_token_id and len(r) < 12 for r in rows), rows


@pytest.mark.parametrize(
  "variant,g,enc",
  [("mha", None, False), ("gqa", 2, False), ("mqa", None, True), ("colrandwgqa", 3, False)],
)
def test_cached_equals_uncached(variant, g, enc):
  _, params, cfg = converted(V11)
  params, cfg = variants.from_mha(params, cfg, variant, g, group_encoder=enc, seed=1)
  ids, _, _ = batch(cfg.vocab_size, b=3, s=11, seed=2)
  np.testing.assert_array_equal(greedy(params, cfg, ids, 10), greedy_uncached(params, ids, cfg, 10))


def test_cache_holds_only_the_kv_heads():
  _, params, cfg = converted(V11)
  h = cfg.num_heads
  sizes = {}
  for g in (h, 3, 1):
    p, c = variants.from_mha(params, cfg, "gqa", g)
    encoded = jax.numpy.zeros((2, 11, cfg.d_model))
    cache = t5.T5(c).apply({"params": p}, encoded, 7, method=t5.T5.init_cache)
    assert len(cache) == cfg.num_decoder_layers
    assert cache[0]["self_k"].shape == (2, 7, g, cfg.d_kv)
    assert cache[0]["cross_v"].shape == (2, 11, g, cfg.d_kv)
    actual = sum(x.nbytes for x in jax.tree.leaves(cache))
    assert actual == decoding.cache_bytes(c, 2, 11, 7)
    sizes[g] = actual
  assert sizes[3] * h == sizes[h] * 3 and sizes[1] * h == sizes[h]


def test_sampling_top_k_1_is_greedy_and_seeded():
  _, params, cfg = converted(V11)
  ids, _, _ = batch(cfg.vocab_size, b=3, s=11)
  key = jax.random.PRNGKey(5)
  sampled = lambda **kw: decoding.generate(
    params, cfg, ids, GenerationConfig(max_new_tokens=10, do_sample=True, **kw), key
  )
  np.testing.assert_array_equal(sampled(top_k=1), greedy(params, cfg, ids, 10))
  a = sampled(temperature=1.5, top_k=0)
  np.testing.assert_array_equal(a, sampled(temperature=1.5, top_k=0))
  assert not np.array_equal(a, greedy(params, cfg, ids, 10))


def test_the_beam_loop_with_one_beam_is_greedy():
  """generate() sends num_beams=1 to the sample loop; the beam loop run with one beam must
  agree with it."""
  _, params, cfg = converted(V10)
  ids, _, _ = batch(cfg.vocab_size, b=3, s=11)
  gen = GenerationConfig(max_new_tokens=9)

  @jax.jit
  def one_beam(params, ids):
    dec = t5_decoding.begin(params, cfg, ids, None, 1, gen.max_new_tokens)
    return search.beam(dec, ids.shape[0], gen, cfg.eos_token_id, cfg.pad_token_id, cfg.vocab_size)

  assert strip(one_beam(params, ids)) == strip(greedy(params, cfg, ids, 9))


def test_several_samples_share_one_encoding_and_top_k_1_gives_greedy_each_time():
  """num_return_sequences copies read one encoder output and one cross K/V per input: with
  top_k=1 every copy is the greedy sequence of its input."""
  _, params, cfg = converted(V11)
  ids, _, _ = batch(cfg.vocab_size, b=3, s=11)
  gen = GenerationConfig(max_new_tokens=10, do_sample=True, top_k=1, num_return_sequences=3)
  got = np.asarray(decoding.generate(params, cfg, ids, gen, jax.random.PRNGKey(2)))
  np.testing.assert_array_equal(got, np.repeat(np.asarray(greedy(params, cfg, ids, 10)), 3, 0))
