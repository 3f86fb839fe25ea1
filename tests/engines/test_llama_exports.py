"""Our Llama-architecture exports served by llama.cpp (llama-cpp-python, built from source by
the test extra) and by CTranslate2 (its CPU wheel; the last test): a tiny model trained here for
a few seconds on the built-in task with its own sentencepiece vocabulary, converted to each
variant, exported to GGUF by the command users run (python -m wgqa_jax.convert --export=gguf,
which runs llama.cpp's own converter) and run by the engine on the CPU against our JAX model:
- the engine tokenizes text into our ids (the vocabulary went in as llama.cpp's unigram
  tokenizer, unknown characters included);
- greedy decoding by the engine's sampler equals ours for 32 new tokens on three prompts;
- its next-token logits equal ours at every position of prompt + continuation. Tolerance: an f32
  GGUF with an f32 KV cache against our f32 model differ only in summation order (seen: ~1e-6 of
  the largest logit); 1e-4 of it leaves headroom and still fails any wrong weight, head order or
  rotary layout (those move logits by O(1));
- the KV cache llama.cpp reports (its log: K and V MiB, f16) equals our cache_bytes in a 2-byte
  dtype for the same context, so its ratio to MHA's is G/H (per layer for per-layer G).
"""

import os

import jax
import numpy as np
import pytest
from engine_runs import calibration_stats, convert, ct2_convert, export, train_tiny

from wgqa_jax import decoding
from wgqa_jax.data import tasks
from wgqa_jax.decoding import GenerationConfig
from wgqa_jax.decoding.llama_cpp import Engine
from wgqa_jax.grouping import kv_budget, variants
from wgqa_jax.models import family_of
from wgqa_jax.models.llama import Llama
from wgqa_jax.store import params_io

NEW_TOKENS = 32
KV_CTX = 8192  # a context whose K and V sizes llama.cpp's MiB figures show exactly


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny MHA Llama (llama-tiny-long: 8 heads, FFN width 256) trained for 120 steps."""
  return train_tiny(
    tmp_path_factory,
    "configs/llama_tiny.py",
    120,
    "--config.model.arch=llama-tiny-long",
    "--config.data.train_examples=512",
  )


def variant(name, params, cfg, tok):
  """(params, cfg) of one of the exports under test, from the trained MHA model."""
  if name == "mha":
    return params, cfg
  if name == "random-mha":
    return jax.device_get(family_of(cfg).init_params(cfg, jax.random.PRNGKey(7))), cfg
  if name == "gqa2":
    return variants.from_mha(params, cfg, "gqa", 2)
  if name == "mqa":
    return variants.from_mha(params, cfg, "mqa", 1)
  if name == "wgqa2":  # random weights (RandWGQA, N(0, 1)): far from a plain mean, folded on export
    return variants.from_mha(params, cfg, "randwgqa", 2, seed=3)
  stats = calibration_stats(params, cfg, tok)
  if name == "svd2":
    return variants.from_mha(params, cfg, "svd", 2, calibration=stats)
  assert name == "proxy-per-layer"  # grouping.layer_budget=proxy's allocation: 2 heads per layer
  read = lambda path: params[path[0]][path[1]][path[2]]
  heads = kv_budget.by_proxy(read, cfg, stats, "svd", 2)
  return variants.from_mha(params, cfg, "svd", 2, calibration=stats, module_kv_heads=heads)


def prompts(tok):
  """Three prompts as the model was trained to continue them: `input EOS`, our ids."""
  examples = tasks.source("synthetic_summarize", "validation", 3)
  return [tok.encode(doc)[:60] + [tok.eos_id] for doc, _ in examples]


def our_greedy(params, cfg, ids):
  """Our KV-cached greedy decoding, with an EOS that never comes, so that 32 tokens follow."""
  gen = GenerationConfig(max_new_tokens=NEW_TOKENS)
  out = decoding.generate(
    params,
    cfg.replace(eos_token_id=-1),
    np.array([ids], np.int32),
    gen,
    attention_mask=np.ones((1, len(ids)), np.int32),
  )
  return [int(t) for t in np.asarray(out)[0]]


def our_logits(params, cfg, ids):
  x = np.array([ids], np.int32)
  return np.asarray(Llama(cfg).apply({"params": params}, x, np.ones_like(x)))[0]


VARIANTS = ["mha", "random-mha", "gqa2", "mqa", "wgqa2", "svd2", "proxy-per-layer"]


@pytest.mark.parametrize("name", VARIANTS)
def test_llama_cpp_serves_our_export(trained, tmp_path, name):
  wd, mha_params, mha_cfg, tok = trained
  params, cfg = variant(name, mha_params, mha_cfg, tok)
  if name == "proxy-per-layer":
    assert cfg.grouping.per_module, cfg.grouping.module_kv_heads  # per-layer G: the DeciLM form
  path = export(wd, name, params, cfg, "gguf", tmp_path / f"{name}.gguf", "--gguf_type=f32")

  engine = Engine(path, n_ctx=512, kv_type="f32")
  try:
    text = "Marco visited the old harbour; the ferry left at 9:40. Ünïcode ☃ too."
    assert engine.llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
    for ids in prompts(tok):
      want = our_greedy(params, cfg, ids)
      assert engine.greedy(ids, NEW_TOKENS) == want
      got_logits = engine.logits(ids + want)
      ref = our_logits(params, cfg, ids + want)
      scale = np.abs(ref).max()
      np.testing.assert_allclose(got_logits, ref, rtol=0, atol=1e-4 * scale)
  finally:
    engine.close()

  # llama.cpp's default f16 cache, with flash attention: without it, V is padded to the
  # largest layer's (its log warns; checked below)
  served = Engine(path, n_ctx=KV_CTX, flash_attn=True)
  try:
    ours = decoding.cache_bytes(cfg.replace(dtype="bfloat16"), 1, KV_CTX, 0)
    mha = decoding.cache_bytes(mha_cfg.replace(dtype="bfloat16"), 1, KV_CTX, 0)
    kv = served.kv_cache_mib
    assert kv["type"] == "f16"
    assert (kv["K"] + kv["V"]) * 2**20 == ours
    heads = [cfg.kv_heads_at((f"layers_{i}", "attention")) for i in range(cfg.num_layers)]
    assert ours / mha == sum(heads) / (cfg.num_heads * cfg.num_layers)
  finally:
    served.close()
  if cfg.grouping.per_module:  # without flash attention: every layer's V as the largest layer's
    padded = Engine(path, n_ctx=KV_CTX)
    try:
      assert "padding V cache" in padded.log
      assert padded.kv_cache_mib["V"] * 2**20 == ours / 2 * max(heads) * len(heads) / sum(heads)
    finally:
      padded.close()


def test_gguf_export_of_what_no_engine_format_holds_is_refused_before_writing(trained, tmp_path):
  """Unequal groups (AsymGQA) have no serving format: one line, exit 2, nothing written."""
  wd, params, cfg, _ = trained
  asym, asym_cfg = variants.from_mha(params, cfg, "asymgqa", 3, group_sizes=[4, 2, 2])
  params_io.save(asym, asym_cfg, str(wd / "asym"))
  out = tmp_path / "asym.gguf"
  r = convert(f"--params={wd / 'asym'}", "--export=gguf", f"--export_to={out}", code=2)
  assert len(r.stderr.strip().splitlines()) == 1 and "equal groups" in r.stderr
  assert not os.path.exists(out) and os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["mha", "gqa2", "wgqa2"])
def test_ctranslate2_serves_our_hf_export(trained, tmp_path, name):
  """CTranslate2 holds one KV head count for all layers (no DeciLM form: per-layer G stays
  with llama.cpp). Greedy 32 tokens equal ours; its log-probabilities of them equal ours
  (1e-4: f32 both sides, summation order only)."""
  import ctranslate2

  wd, mha_params, mha_cfg, tok = trained
  params, cfg = variant(name, mha_params, mha_cfg, tok)
  export(wd, f"ct2-{name}", params, cfg, "hf", tmp_path / "hf")
  model, vocab = ct2_convert(tmp_path / "hf", tmp_path / "ct2", "vocabulary.json")
  generator = ctranslate2.Generator(model, device="cpu", compute_type="float32")
  pieces = lambda ids: [vocab[i] for i in ids]
  for ids in prompts(tok):
    want = our_greedy(params, cfg, ids)
    out = generator.generate_batch(
      [pieces(ids)], max_length=NEW_TOKENS, sampling_topk=1, end_token=[],
      include_prompt_in_result=False,
    )  # fmt: skip
    assert out[0].sequences_ids[0] == want
    logits = our_logits(params, cfg, ids + want)
    log_probs = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    ours = np.asarray(log_probs)[np.arange(len(ids) - 1, len(ids) + NEW_TOKENS - 1), want]
    theirs = generator.score_batch([pieces(ids + want)])[0].log_probs[len(ids) - 1 :]
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)


def test_a_damaged_gguf_is_named_in_one_line(tmp_path):
  """llama.cpp's own reason, in one line, not a traceback of llama-cpp-python's ValueError."""
  from wgqa_jax.core.errors import UserError

  path = tmp_path / "torn.gguf"
  path.write_bytes(b"GGUF" + bytes(100))
  with pytest.raises(UserError, match="cannot load .*torn.gguf: .*error loading model") as e:
    Engine(str(path))
  assert "\n" not in str(e.value)
