"""The Llama-architecture family against HF PyTorch: logits of LlamaForCausalLM and
MistralForCausalLM (no sliding window) on tiny random models with odd shapes (head_dim * H !=
hidden) and padded batches; MHA -> GQA conversion against a torch reference that mean-pools
HF's k_proj / v_proj rows per group; export as a *native* GQA checkpoint (num_key_value_heads=G)
that transformers loads with G K/V heads."""
import jax
import numpy as np
import pytest
import torch

from wgqa_jax import hf, variants
from wgqa_jax.models import llama

SPEC = dict(vocab_size=97, hidden_size=40, intermediate_size=56, num_hidden_layers=2,
            num_attention_heads=4, head_dim=12, rope_theta=500.0, rms_norm_eps=1e-5,
            max_position_embeddings=64, tie_word_embeddings=False)


def hf_model(model_type="llama", kv_heads=4, tied=False, seed=0, **changes):
  from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
  torch.manual_seed(seed)
  spec = {**SPEC, "num_key_value_heads": kv_heads, "tie_word_embeddings": tied, **changes}
  if model_type == "mistral":
    model = MistralForCausalLM(MistralConfig(**spec, sliding_window=None))
  else:
    model = LlamaForCausalLM(LlamaConfig(**spec))
  with torch.no_grad():  # non-trivial norms, so the tests see them
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
  return model.eval()


def save(model, path):
  model.save_pretrained(str(path), safe_serialization=True)
  return str(path)


def batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 97, (3, 11)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0   # right padding
  mask[2, :4] = 0   # left padding
  return ids, mask


def hf_logits(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def ours(params, cfg, ids, mask):
  return np.asarray(llama.Llama(cfg).apply({"params": params}, ids.astype(np.int32),
                                           mask.astype(np.int32)))


def assert_close_where_valid(got, want, mask):
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type,kv_heads,tied", [
    ("llama", 4, False), ("llama", 2, False), ("llama", 1, True), ("mistral", 4, False)])
def test_logits_equal_hf(tmp_path, model_type, kv_heads, tied):
  model = hf_model(model_type, kv_heads, tied)
  params, cfg = hf.from_hf(save(model, tmp_path / "hf"))
  assert cfg.kv_heads == kv_heads and cfg.model_type == model_type
  assert params["layers_0"]["attention"]["k"].shape == (40, kv_heads, 12)  # G heads, as saved
  ids, mask = batch()
  assert_close_where_valid(ours(params, cfg, ids, mask), hf_logits(model, ids, mask), mask)


def pooled_reference(model, groups):
  """A HF model with `groups` KV heads whose k_proj / v_proj rows are the mean of each group's
  contiguous heads: what GQA conversion means, written in torch."""
  from transformers import LlamaForCausalLM
  cfg = model.config.to_dict()
  h, dk = cfg["num_attention_heads"], cfg["head_dim"]
  g_old = cfg["num_key_value_heads"]
  ref = LlamaForCausalLM(type(model.config)(**{**cfg, "num_key_value_heads": groups})).eval()
  sd = model.state_dict()
  for k, v in list(sd.items()):
    if k.endswith(("k_proj.weight", "v_proj.weight")):
      heads = v.reshape(g_old, dk, -1).repeat_interleave(h // g_old, 0)  # as H heads
      sd[k] = heads.reshape(groups, h // groups, dk, -1).mean(1).reshape(groups * dk, -1)
  ref.load_state_dict(sd)
  return ref


@pytest.mark.parametrize("source_kv,variant,groups", [(4, "gqa", 2), (4, "mqa", 1), (2, "mqa", 1)])
def test_grouping_equals_mean_pooled_hf_and_exports_natively(tmp_path, source_kv, variant, groups):
  from transformers import AutoModelForCausalLM
  model = hf_model("llama", source_kv)
  params, cfg = hf.from_hf(save(model, tmp_path / "hf"))
  if not variants.is_mha(cfg):  # already GQA: re-grouped to fewer heads through MHA
    params, cfg = variants.expand_to_mha(params, cfg)
  params, cfg = variants.from_mha(params, cfg, variant, groups)
  ids, mask = batch()
  got = ours(params, cfg, ids, mask)
  assert_close_where_valid(got, hf_logits(pooled_reference(model, groups), ids, mask), mask)

  hf.save_hf(params, cfg, str(tmp_path / "export"))
  exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
  assert exported.config.num_key_value_heads == groups
  assert tuple(exported.model.layers[0].self_attn.k_proj.weight.shape) == (groups * 12, 40)
  assert_close_where_valid(got, hf_logits(exported, ids, mask), mask)


def test_wgqa_folds_into_a_native_gqa_export(tmp_path):
  from transformers import AutoModelForCausalLM
  params, cfg = hf.from_hf(save(hf_model("llama", 4), tmp_path / "hf"))
  params, cfg = variants.from_mha(params, cfg, "randwgqa", 2, seed=3)  # N(0,1) weights: not GQA
  assert params["layers_1"]["attention"]["k"].shape == (40, 4, 12)  # all H kernels kept
  ids, mask = batch()
  got = ours(params, cfg, ids, mask)
  hf.save_hf(params, cfg, str(tmp_path / "export"))
  exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
  assert exported.config.num_key_value_heads == 2
  assert_close_where_valid(got, hf_logits(exported, ids, mask), mask)


def test_unsupported_configs_are_refused():
  from wgqa_jax.models.llama_config import LlamaConfig
  base = {**SPEC, "num_key_value_heads": 4, "model_type": "llama"}
  with pytest.raises(ValueError, match="sliding window"):
    LlamaConfig.from_hf({**base, "model_type": "mistral", "sliding_window": 4096})
  with pytest.raises(ValueError, match="rope scaling"):
    LlamaConfig.from_hf({**base, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
  with pytest.raises(ValueError, match="biases"):
    LlamaConfig.from_hf({**base, "attention_bias": True})


def test_convert_cli_uptrain_ready_wgqa_then_fold_and_export(tmp_path):
  """convert --hf (family from config.json) -> WGQA params dir -> --fold --export_hf: a native
  GQA directory transformers loads, with our params dir's logits."""
  from transformers import AutoModelForCausalLM
  from wgqa_jax import convert, params_io
  src = save(hf_model("llama", 4), tmp_path / "hf")
  wgqa_dir, out = str(tmp_path / "wgqa"), str(tmp_path / "export")
  assert convert.main([f"--hf={src}", "--variant=randwgqa", "--kv_heads=2", "--seed=1",
                       f"--out={wgqa_dir}"]) == 0
  params, cfg = params_io.load(wgqa_dir)
  assert type(cfg).__name__ == "LlamaConfig" and cfg.grouping.weights == "row"
  assert convert.main([f"--params={wgqa_dir}", "--fold", f"--export_hf={out}"]) == 0
  exported = AutoModelForCausalLM.from_pretrained(out).eval()
  assert exported.config.num_key_value_heads == 2
  ids, mask = batch()
  assert_close_where_valid(ours(params, cfg, ids, mask), hf_logits(exported, ids, mask), mask)
  # the exported GQA-2 checkpoint re-groups to MQA
  assert convert.main([f"--hf={out}", "--variant=mqa", f"--out={tmp_path / 'mqa'}"]) == 0
  assert params_io.load(str(tmp_path / "mqa"))[1].kv_heads == 1


# ------------------------------------------------------------------- generation ----
def hf_greedy(model, ids, mask, new_tokens, eos, pad=0):
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                         eos_token_id=eos, pad_token_id=pad)
  new = out[:, ids.shape[1]:].numpy()
  return np.pad(new, ((0, 0), (0, new_tokens - new.shape[1])), constant_values=pad)


@pytest.mark.parametrize("variant", ["mha", "gqa", "randwgqa"])
def test_cached_greedy_equals_hf_generate_on_left_padded_prompts(tmp_path, variant):
  """Our KV cache holds G heads; the tokens equal HF generate()'s on the exported model,
  including rows that stop at EOS (then pad) while others go on."""
  from transformers import AutoModelForCausalLM
  from wgqa_jax import decode_causal
  from wgqa_jax.generation import GenerationConfig
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
  got = decode_causal.generate(params, ids.astype(np.int32), mask, cfg.replace(eos_token_id=eos),
                               gen)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_sampling_is_seeded_and_returns_several_sequences(tmp_path):
  from wgqa_jax import decode_causal
  from wgqa_jax.generation import GenerationConfig
  params, cfg = hf.from_hf(save(hf_model("llama", 2), tmp_path / "hf"))
  ids, mask = batch()
  mask[:] = 1
  gen = GenerationConfig(max_new_tokens=6, do_sample=True, top_k=5, temperature=0.7,
                         num_return_sequences=2)
  run = lambda seed: np.asarray(decode_causal.generate(params, ids.astype(np.int32), mask, cfg,
                                                       gen, jax.random.PRNGKey(seed)))
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
    mask[r, :r % 7] = 0
  ids[mask == 0] = 0
  greedy = hf_greedy(ref, ids, mask, 12, eos=96)
  eos = int(np.bincount(greedy[:, 2:].ravel()).argmax())
  return ref, params, cfg.replace(eos_token_id=eos), ids, mask


@pytest.mark.parametrize("kw", [
    dict(num_beams=4, length_penalty=0.6, early_stopping=True),
    dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
    dict(num_beams=2, length_penalty=1.0, early_stopping=False),
    dict(num_beams=4, num_return_sequences=3, length_penalty=2.0, early_stopping="never"),
    dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=1),
    dict(min_new_tokens=6),
    dict(min_length=14),
    dict(num_beams=4, min_length=12, no_repeat_ngram_size=3, repetition_penalty=1.3,
         length_penalty=2.0, early_stopping=True),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_beam_search_and_controls_equal_hf_generate(gqa_pair, kw):
  """Beam search (cache of G heads following its beams) and the logits controls, which for a
  decoder-only model read the left-padded prompt as HF's processors read input_ids."""
  from wgqa_jax import decode, decode_causal
  from wgqa_jax.generation import GenerationConfig
  ref, params, cfg, ids, mask = gqa_pair
  gen = GenerationConfig(max_new_tokens=10, **kw)
  ours = decode_causal.generate(params, ids.astype(np.int32), mask, cfg, gen)
  with torch.no_grad():
    out = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       do_sample=False, max_new_tokens=10, eos_token_id=cfg.eos_token_id,
                       pad_token_id=0, **kw)
  ours, theirs = (decode.strip(x, cfg.eos_token_id) for x in (ours, out[:, ids.shape[1]:].numpy()))
  assert len(ours) == len(theirs) == ROWS * kw.get("num_return_sequences", 1)
  wrong = [r for r, (a, b) in enumerate(zip(ours, theirs)) if a != b]
  assert not wrong, f"{len(wrong)} rows differ, e.g. row {wrong[0]}: {ours[wrong[0]]} vs " \
                    f"{theirs[wrong[0]]}"
  if kw.get("length_penalty", 1.0) < 1.0:  # short hypotheses favoured: they end at many lengths
    assert len({len(r) for r in ours}) > 2
