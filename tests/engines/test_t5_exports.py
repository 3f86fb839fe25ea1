"""Our T5 exports served by llama.cpp's `t5` architecture (and by CTranslate2: the last test): a
tiny T5 trained here for a few
seconds with its own sentencepiece vocabulary (and random ones, v1.0 relu/tied and v1.1
gated-gelu/untied), exported to GGUF by `python -m wgqa_jax.convert --export=gguf` (llama.cpp's
own converter) and run by the engine: encode, then decode greedily from its start token.

llama.cpp's T5 has one head count for K/V and queries, so a GQA T5 goes in expanded to MHA, as
our HF export does: the same function, served at MHA's KV size. Its KV cache holds the decoder's
self-attention only (it recomputes cross-attention K/V from the encoder output each step), which
is what it reports and what we compare: our self-attention cache of the expanded model.
Tolerances as in test_llama_exports.py (f32 GGUF, f32 cache: summation order only), except
for gated-gelu (v1.1) models: ggml's CPU GELU is a table of f16 inputs and outputs
(ggml-cpu/vec.h, GGML_GELU_FP16), a relative error near 1e-3 per activation; seen: 4e-4 of the
largest logit, allowed: 2e-3. A tied T5 (v1.0) goes in with its head untied and pre-scaled
(store/gguf.py): llama.cpp does not scale a tied head's input, and its logits would be
sqrt(d_model) times ours.
"""

import jax
import numpy as np
import pytest
from engine_runs import ct2_convert, export, train_tiny

from wgqa_jax import decoding
from wgqa_jax.data import tasks
from wgqa_jax.decoding import GenerationConfig
from wgqa_jax.decoding.llama_cpp import Engine
from wgqa_jax.grouping import variants
from wgqa_jax.models import family_of, t5

NEW_TOKENS = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """configs/tiny.py's T5 (v1.0: relu, tied), MHA, trained for 300 steps."""
  return train_tiny(tmp_path_factory, "configs/tiny.py", 300)


def variant(name, params, cfg):
  if name == "mha":
    return params, cfg
  if name == "gqa2":
    return variants.from_mha(params, cfg, "gqa", 2)
  if name == "random-v1.1":
    cfg = cfg.replace(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  return jax.device_get(family_of(cfg).init_params(cfg, jax.random.PRNGKey(5))), cfg


@pytest.mark.parametrize("name", ["mha", "gqa2", "random-v1.0", "random-v1.1"])
def test_llama_cpp_serves_our_t5_export(trained, tmp_path, name):
  wd, mha_params, mha_cfg, tok = trained
  params, cfg = variant(name, mha_params, mha_cfg)
  path = export(wd, name, params, cfg, "gguf", tmp_path / f"{name}.gguf", "--gguf_type=f32")
  engine = Engine(path, n_ctx=512, kv_type="f32")
  try:
    text = "Marco visited the old harbour; the ferry left at 9:40. Ünïcode ☃ too."
    assert engine.llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
    expanded = variants.expand_to_mha(params, cfg)[1]
    kv = engine.kv_cache_mib
    self_cache = decoding.cache_bytes(expanded, 1, 0, 512)  # f32, self-attention only
    assert (kv["K"] + kv["V"]) * 2**20 == self_cache
    seen = set()
    for doc, _ in tasks.source("synthetic_summarize", "validation", 3):
      ids = tok.encode(doc)[:60] + [tok.eos_id]
      got, got_logits = engine.seq2seq_greedy(ids, NEW_TOKENS, logits=True)
      gen = GenerationConfig(max_new_tokens=NEW_TOKENS)
      want = decoding.generate(params, cfg.replace(eos_token_id=-1), np.array([ids], np.int32), gen)
      want = [int(t) for t in np.asarray(want)[0]]
      assert got == want
      seen.update(want)
      dec = np.array([[cfg.decoder_start_token_id, *want[:-1]]], np.int32)
      x = np.array([ids], np.int32)
      ref = np.asarray(t5.T5(cfg).apply({"params": params}, x, dec, np.ones_like(x)))[0]
      tolerance = 2e-3 if cfg.feed_forward_proj == "gated-gelu" else 1e-4
      np.testing.assert_allclose(got_logits, ref, rtol=0, atol=tolerance * np.abs(ref).max())
    if name == "mha":  # the trained model: the comparison saw varied tokens, not one repeated
      assert len(seen) > 3, seen
  finally:
    engine.close()


@pytest.mark.parametrize("name", ["mha", "gqa2"])
def test_ctranslate2_serves_our_t5_hf_export(trained, tmp_path, name):
  """CTranslate2's converter on our HF export (a GQA T5 expanded to MHA, as HF holds it):
  greedy 32 tokens equal ours, and its log-probabilities of them equal ours (1e-4)."""
  import ctranslate2

  wd, mha_params, mha_cfg, tok = trained
  params, cfg = variant(name, mha_params, mha_cfg)
  export(wd, f"ct2-{name}", params, cfg, "hf", tmp_path / "hf")
  model, vocab = ct2_convert(tmp_path / "hf", tmp_path / "ct2", "shared_vocabulary.json")
  translator = ctranslate2.Translator(model, device="cpu", compute_type="float32")
  pieces = lambda ids: [vocab[i] for i in ids]
  for doc, _ in tasks.source("synthetic_summarize", "validation", 3):
    ids = tok.encode(doc)[:60] + [tok.eos_id]
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS)
    want = decoding.generate(params, cfg.replace(eos_token_id=-1), np.array([ids], np.int32), gen)
    want = [int(t) for t in np.asarray(want)[0]]
    out = translator.translate_batch(
      [pieces(ids)], beam_size=1, max_decoding_length=NEW_TOKENS, end_token=[]
    )
    assert [vocab.index(p) for p in out[0].hypotheses[0]] == want
    dec = np.array([[cfg.decoder_start_token_id, *want[:-1]]], np.int32)
    x = np.array([ids], np.int32)
    logits = t5.T5(cfg).apply({"params": params}, x, dec, np.ones_like(x))[0]
    log_probs = np.asarray(logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True))
    ours = log_probs[np.arange(NEW_TOKENS), want]
    theirs = translator.score_batch([pieces(ids)], [pieces(want)])[0].log_probs[:NEW_TOKENS]
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
