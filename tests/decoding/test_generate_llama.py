"""The decoder-only family through the decoding package (wgqa_jax.models.llama.decoding): cached
greedy search, sampling, beam search and the logits controls equal HF `generate()` on
left-padded prompts, with a cache of G heads."""

import jax
import numpy as np
import pytest
import torch
from hf_llama import batch, hf_model, save

from wgqa_jax import decoding
from wgqa_jax.decoding import GenerationConfig, strip
from wgqa_jax.grouping import variants
from wgqa_jax.store import hf


def hf_greedy(model, ids, mask, new_tokens, eos, pad=0):
  with torch.no_grad():
    out = model.generate(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      max_new_tokens=new_tokens,
      do_sample=False,
      num_beams=1,
      eos_token_id=eos,
      pad_token_id=pad,
    )
  new = out[:, ids.shape[1] :].numpy()
  return np.pad(new, ((0, 0), (0, new_tokens - new.shape[1])), constant_values=pad)


@pytest.mark.parametrize("variant", ["mha", "gqa", "randwgqa"])
def test_cached_greedy_equals_hf_generate_on_left_padded_prompts(tmp_path, variant):
  """Our KV cache holds G heads; the tokens equal HF generate()'s on the exported model,
  including rows that stop at EOS (then pad) while others go on."""
  from transformers import AutoModelForCausalLM

  params, cfg = hf.from_hf(save(hf_model("llama", 4), tmp_path / "hf"))
  if variant != "mha":
    params, cfg = variants.from_mha(params, cfg, variant, 2, seed=2)
  hf.save_hf(params, cfg, str(tmp_path / "export"))
  ref = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
  ids, mask = batch()
  ids, mask = ids.copy(), np.ones_like(mask)
  mask[1, :3], mask[2, :6] = 0, 0  # left padding, as decoder-only generate() expects
  ids[mask == 0] = 0
  want = hf_greedy(ref, ids, mask, 12, eos=96)
  eos = int(want[1, 4])  # a token row 1 emits early: now it ends there
  want = hf_greedy(ref, ids, mask, 12, eos=eos)
  assert (want == 0).any() and not (want == 0).all(axis=1).any()
  gen = GenerationConfig(max_new_tokens=12)
  got = decoding.generate(
    params, cfg.replace(eos_token_id=eos), ids.astype(np.int32), gen, attention_mask=mask
  )
  np.testing.assert_array_equal(np.asarray(got), want)


def test_sampling_is_seeded_and_returns_several_sequences(tmp_path):
  params, cfg = hf.from_hf(save(hf_model("llama", 2), tmp_path / "hf"))
  ids, mask = batch()
  mask[:] = 1
  gen = GenerationConfig(
    max_new_tokens=6, do_sample=True, top_k=5, temperature=0.7, num_return_sequences=2
  )
  run = lambda seed: np.asarray(
    decoding.generate(
      params, cfg, ids.astype(np.int32), gen, jax.random.PRNGKey(seed), attention_mask=mask
    )
  )
  a, b = run(1), run(2)
  assert a.shape == (6, 6) and not np.array_equal(a, b)
  np.testing.assert_array_equal(a, run(1))
  assert not np.array_equal(a[0], a[1])  # two draws for the first prompt


# ------------------------------------------------- beam search and the controls vs HF ----
ROWS = 12


@pytest.fixture(scope="module")
def gqa_pair(tmp_path_factory):
  """(HF reference loaded from our native GQA-2 export, our params, cfg, prompts, mask), with an
  EOS the model emits often, so hypotheses end at many lengths."""
  from transformers import AutoModelForCausalLM

  tmp = tmp_path_factory.mktemp("llama_gen")
  params, cfg = hf.from_hf(save(hf_model("llama", 4, seed=5), tmp / "hf"))
  params, cfg = variants.from_mha(params, cfg, "gqa", 2)
  hf.save_hf(params, cfg, str(tmp / "export"))
  ref = AutoModelForCausalLM.from_pretrained(str(tmp / "export")).eval()
  rng = np.random.default_rng(3)
  ids = rng.integers(3, 97, (ROWS, 9)).astype(np.int64)
  mask = np.ones_like(ids)
  for r in range(ROWS):  # left padding of every length
    mask[r, : r % 7] = 0
  ids[mask == 0] = 0
  greedy = hf_greedy(ref, ids, mask, 12, eos=96)
  eos = int(np.bincount(greedy[:, 2:].ravel()).argmax())
  return ref, params, cfg.replace(eos_token_id=eos), ids, mask


@pytest.mark.parametrize(
  "kw",
  [
    dict(num_beams=4, length_penalty=0.6, early_stopping=True),
    dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
    dict(num_beams=2, length_penalty=1.0, early_stopping=False),
    dict(num_beams=4, num_return_sequences=3, length_penalty=2.0, early_stopping="never"),
    dict(repetition_penalty=1.5),
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=1),
    dict(min_new_tokens=6),
    dict(min_length=14),
    dict(
      num_beams=4,
      min_length=12,
      no_repeat_ngram_size=3,
      repetition_penalty=1.3,
      length_penalty=2.0,
      early_stopping=True,
    ),
  ],
  ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_beam_search_and_controls_equal_hf_generate(gqa_pair, kw):
  """Beam search (cache of G heads following its beams) and the logits controls, which for a
  decoder-only model read the left-padded prompt as HF's processors read input_ids."""
  ref, params, cfg, ids, mask = gqa_pair
  gen = GenerationConfig(max_new_tokens=10, **kw)
  ours = decoding.generate(params, cfg, ids.astype(np.int32), gen, attention_mask=mask)
  with torch.no_grad():
    out = ref.generate(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      do_sample=False,
      max_new_tokens=10,
      eos_token_id=cfg.eos_token_id,
      pad_token_id=0,
      **kw,
    )
  ours, theirs = (strip(x, cfg.eos_token_id) for x in (ours, out[:, ids.shape[1] :].numpy()))
  assert len(ours) == len(theirs) == ROWS * kw.get("num_return_sequences", 1)
  wrong = [r for r, (a, b) in enumerate(zip(ours, theirs)) if a != b]
  assert not wrong, (
    f"{len(wrong)} rows differ, e.g. row {wrong[0]}: {ours[wrong[0]]} vs {theirs[wrong[0]]}"
  )
  if kw.get("length_penalty", 1.0) < 1.0:  # short hypotheses favoured: they end at many lengths
    assert len({len(r) for r in ours}) > 2


def test_cache_holds_only_the_kv_heads(tmp_path):
  """(rows, prompt + new tokens, G, head_dim) per layer for K and V, as cache_bytes says."""
  from wgqa_jax.models.llama import Llama

  params, cfg = hf.from_hf(save(hf_model("llama", 4), tmp_path / "hf"))
  sizes = {}
  for g in (4, 2, 1):
    p, c = (params, cfg) if g == 4 else variants.from_mha(params, cfg, "gqa", g)
    cache = Llama(c).apply({"params": p}, 2, 7 + 5, method=Llama.init_cache)
    assert len(cache) == c.num_layers and cache[0]["k"].shape == (2, 12, g, c.head_dim)
    sizes[g] = sum(x.nbytes for x in jax.tree.leaves(cache))
    assert sizes[g] == decoding.cache_bytes(c, 2, 7, 5)
  assert sizes[2] * 2 == sizes[4] and sizes[1] * 4 == sizes[4]


def test_copies_share_one_prefill_and_a_one_token_prompt_equals_hf(tmp_path):
  """Sampled copies read the prompt's cache filled once (top_k=1: each is the greedy sequence),
  and a prompt of one token (nothing to prefill) decodes as HF's generate()."""
  from transformers import AutoModelForCausalLM

  params, cfg = hf.from_hf(save(hf_model("llama", 4), tmp_path / "hf"))
  params, cfg = variants.from_mha(params, cfg, "gqa", 2)
  hf.save_hf(params, cfg, str(tmp_path / "export"))
  ref = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
  ids, mask = batch()
  mask = np.ones_like(mask)
  greedy = np.asarray(
    decoding.generate(
      params, cfg, ids.astype(np.int32), GenerationConfig(max_new_tokens=8), attention_mask=mask
    )
  )
  gen = GenerationConfig(max_new_tokens=8, do_sample=True, top_k=1, num_return_sequences=2)
  copies = np.asarray(
    decoding.generate(
      params, cfg, ids.astype(np.int32), gen, jax.random.PRNGKey(1), attention_mask=mask
    )
  )
  np.testing.assert_array_equal(copies, np.repeat(greedy, 2, 0))
  one = ids[:, :1]
  got = decoding.generate(
    params,
    cfg,
    one.astype(np.int32),
    GenerationConfig(max_new_tokens=8),
    attention_mask=np.ones_like(one),
  )
  np.testing.assert_array_equal(
    np.asarray(got), hf_greedy(ref, one, np.ones_like(one), 8, eos=cfg.eos_token_id)
  )
