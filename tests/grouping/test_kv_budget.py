"""Per-module KV heads (a KV budget spread over modules, wgqa_jax.grouping.kv_budget): the
allocation against brute force, and models, decode caches, checkpoints, fold and export built from a
grouping whose modules have their own G."""

import itertools

import jax
import numpy as np
import pytest
from conftest import batch, hf_logits
from references import greedy_uncached

from wgqa_jax import decoding, models
from wgqa_jax.decoding import GenerationConfig
from wgqa_jax.grouping import kv_budget, variants
from wgqa_jax.models import t5
from wgqa_jax.store import hf, params_io
from wgqa_jax.training import calibration
from wgqa_jax.training.objectives import forward


# ------------------------------------------------------------------------------ allocation ----
@pytest.mark.parametrize("seed", range(4))
def test_allocation_equals_brute_force(seed):
  rng = np.random.default_rng(seed)
  choices = [1, 2, 4, 8]
  errors = {f"m{i}": dict(zip(choices, np.sort(rng.random(4))[::-1])) for i in range(4)}
  total = int(rng.integers(4, 20))
  got = kv_budget.allocate(errors, total)
  best = min(
    (sum(errors[m][g] for m, g in zip(errors, gs)), gs)
    for gs in itertools.product(choices, repeat=4)
    if sum(gs) <= total
  )
  assert sum(errors[m][g] for m, g in got.items()) == pytest.approx(best[0])
  assert sum(got.values()) <= total and list(got) == list(errors)


def test_a_budget_below_one_head_per_module_is_refused():
  with pytest.raises(
    ValueError,
    match="a budget of 3 KV heads cannot cover 4 attention modules "
    r"\(at least 4\)",
  ):
    kv_budget.allocate({f"m{i}": {1: 1.0, 2: 0.5} for i in range(4)}, 3)


def test_proxy_allocation_never_does_worse_than_uniform():
  cfg = models.preset("llama-tiny-8head")
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)
  rows = {
    "tokens": rng.integers(3, 500, (4, 24)).astype(np.int32),
    "segment_ids": np.ones((4, 24), np.int32),
    "positions": np.tile(np.arange(24), (4, 1)).astype(np.int32),
  }
  stats = calibration.collect(params, cfg, iter([rows]), 1, desc=None)
  read = lambda path: params[path[0]][path[1]][path[2]]
  errors = kv_budget.module_errors(read, cfg, stats, "svd")
  assert set(errors) == {(f"layers_{i}", "attention") for i in range(4)}
  assert all(errors[m][8] < 1e-9 for m in errors)  # G = H keeps every head
  allocated = kv_budget.by_proxy(read, cfg, stats, "svd", 2)
  assert sum(allocated.values()) <= 8
  assert sum(errors[m][g] for m, g in allocated.items()) <= sum(errors[m][2] for m in errors)

  # mla: the same bytes as latent ranks, in steps of d_kv / 2, by the latent conversion's error
  from wgqa_jax.grouping import latent_merge

  ranks = kv_budget.by_proxy(read, cfg, stats, "mla", 2)
  uniform = 2 * 2 * cfg.head_dim - cfg.head_dim  # the rank of G = 2 beside one rotary key
  assert sum(ranks.values()) <= 4 * uniform and all(r % 8 == 0 for r in ranks.values())
  assert len(set(ranks.values())) > 1  # spread unevenly
  latent_err = {
    m: latent_merge.proxy_errors(
      {n: np.asarray(read(m + (n,))) for n in "qkv"}, stats.gram(m), True
    )
    for m in ranks
  }
  got = sum(latent_err[m][r] for m, r in ranks.items())
  assert got < sum(latent_err[m][uniform] for m in ranks)
  # brute force over the steps of 8 for the first two modules, the others as allocated
  a, b, *rest = ranks
  others = sum(latent_err[m][ranks[m]] for m in rest)
  room = 4 * uniform - sum(ranks[m] for m in rest)
  best = min(latent_err[a][ra] + latent_err[b][room - ra] for ra in range(8, room - 7, 8))
  assert got == pytest.approx(best + others)


# -------------------------------------------------------------- models with per-module G ----
def per_module(arch, seed=0):
  """A random MHA model of `arch` and its GQA conversion with G = 1, 2, 4, 1, ... per module."""
  cfg = models.preset(arch)
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(seed)))
  paths = variants.grouped_paths(cfg.replace(grouping=variants.Grouping(kv_heads=2)))
  heads = {p: [1, 2, 4][i % 3] for i, p in enumerate(paths)}
  new, new_cfg = variants.from_mha(params, cfg, "gqa", 2, module_kv_heads=heads)
  return new, new_cfg, heads


def rows_for(cfg):
  rng = np.random.default_rng(1)
  if cfg.family == 'llama':
    return {
      "tokens": rng.integers(3, 500, (2, 12)).astype(np.int32),
      "segment_ids": np.ones((2, 12), np.int32),
      "positions": np.tile(np.arange(12), (2, 1)).astype(np.int32),
    }
  return {
    "inputs": rng.integers(3, 500, (2, 12)).astype(np.int32),
    "targets": rng.integers(3, 500, (2, 5)).astype(np.int32),
  }


@pytest.mark.parametrize("arch", ["tiny", "llama-tiny"])
def test_each_module_holds_its_own_kv_heads_and_equals_its_mha_expansion(arch):
  params, cfg, heads = per_module(arch)
  for path, g in heads.items():
    module = params
    for name in path:
      module = module[name]
    assert module["k"].shape[1] == module["v"].shape[1] == g == cfg.kv_heads_at(path)
  assert "KV heads per module 1,2" in cfg.grouping.describe(cfg.num_heads)
  mha, mha_cfg = variants.expand_to_mha(params, cfg)
  rows = rows_for(cfg)
  np.testing.assert_allclose(
    forward(params, rows, cfg)[0], forward(mha, rows, mha_cfg)[0], atol=1e-5, rtol=1e-5
  )
  with pytest.raises(ValueError, match="cannot be scanned"):
    cfg.replace(scan_layers=True)


def test_t5_cache_holds_each_modules_heads_and_cached_decoding_equals_uncached():
  params, cfg, heads = per_module("tiny", seed=2)
  ids = np.random.default_rng(3).integers(2, 500, (3, 9)).astype(np.int32)
  np.testing.assert_array_equal(
    decoding.generate(params, cfg, ids, GenerationConfig(max_new_tokens=8)),
    greedy_uncached(params, ids, cfg, 8),
  )
  per_head = 2 * cfg.d_kv * 4
  want = (
    sum(
      heads[("decoder", f"layers_{i}", "self_attention")] * 10
      + heads[("decoder", f"layers_{i}", "cross_attention")] * 9
      for i in range(cfg.num_decoder_layers)
    )
    * per_head
  )
  assert decoding.cache_bytes(cfg, 1, 9, 10) == want


def test_llama_per_layer_cache_decodes_as_its_mha_expansion():
  params, cfg, heads = per_module("llama-tiny", seed=4)
  mha, mha_cfg = variants.expand_to_mha(params, cfg)
  ids = np.random.default_rng(5).integers(3, 500, (2, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :3] = 0
  gen = GenerationConfig(max_new_tokens=9)
  np.testing.assert_array_equal(
    decoding.generate(params, cfg, ids, gen, attention_mask=mask),
    decoding.generate(mha, mha_cfg, ids, gen, attention_mask=mask),
  )
  assert decoding.cache_bytes(cfg, 1, 7, 9) == sum(heads.values()) * 16 * 2 * 16 * 4


@pytest.mark.parametrize("arch", ["tiny", "llama-tiny"])
def test_checkpoint_round_trip_keeps_every_modules_heads(arch, tmp_path):
  params, cfg, _ = per_module(arch)
  params_io.save(params, cfg, str(tmp_path / "p"))
  back, back_cfg = params_io.load(str(tmp_path / "p"))
  assert back_cfg == cfg and back_cfg.grouping.per_module
  rows = rows_for(cfg)
  np.testing.assert_array_equal(forward(back, rows, back_cfg)[0], forward(params, rows, cfg)[0])


def test_wgqa_with_per_module_heads_folds_into_the_same_function():
  cfg = models.preset("llama-tiny")
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(6)))
  heads = {("layers_0", "attention"): 1, ("layers_1", "attention"): 2}
  new, new_cfg = variants.from_mha(params, cfg, "randwgqa", 2, module_kv_heads=heads, seed=3)
  folded, folded_cfg = variants.fold(new, new_cfg)
  assert folded["layers_0"]["attention"]["k"].shape[1] == 1
  rows = rows_for(cfg)
  np.testing.assert_allclose(
    forward(folded, rows, folded_cfg)[0], forward(new, rows, new_cfg)[0], atol=1e-5, rtol=1e-5
  )


def test_t5_export_expands_each_module_and_hf_computes_our_logits(tmp_path):
  from transformers import T5ForConditionalGeneration

  params, cfg, _ = per_module("tiny", seed=7)
  hf.save_hf(params, cfg, str(tmp_path))
  back = T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  ids, mask, dec = batch(cfg.vocab_size)
  ours = np.asarray(t5.T5(cfg).apply({"params": params}, ids, dec, mask))
  np.testing.assert_allclose(hf_logits(back, ids, dec, mask), ours, rtol=1e-5, atol=1e-5)


def test_llama_export_of_per_layer_heads_is_refused_in_one_line(tmp_path):
  params, cfg, _ = per_module("llama-tiny")
  with pytest.raises(ValueError) as e:
    hf.save_hf(params, cfg, str(tmp_path / "out"))
  assert "per-layer KV heads (1,2)" in str(e.value) and "one num_key_value_heads" in str(e.value)
  assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_bad_module_heads_are_refused():
  cfg = models.preset("llama-tiny")
  with pytest.raises(
    ValueError, match="module layers_0/attention has 3 KV heads, which do not divide num_heads=4"
  ):
    variants.grouped_config(cfg, "gqa", 2, module_kv_heads={("layers_0", "attention"): 3})
  with pytest.raises(ValueError, match="names layers_9/attention, which is not a grouped"):
    variants.grouped_config(cfg, "gqa", 2, module_kv_heads={("layers_9", "attention"): 2})
