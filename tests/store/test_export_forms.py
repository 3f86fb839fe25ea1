"""The forms our HF export takes for serving engines (wgqa_jax.store.hf, .tokenizer_files), checked
in transformers without an engine: T5's "untied" form (a tied head written out, pre-scaled) is
the same function; Llama's DeciLM form holds per-layer G, with FFN widths its readers compute
back, and refuses in one line what it cannot hold; the tokenizer files give our ids.
(The engines themselves: tests/engines.)"""

import json

import jax
import numpy as np
import pytest
from conftest import V10, hf_logits, make_hf_model

from wgqa_jax import models
from wgqa_jax.core.errors import UserError
from wgqa_jax.data import tasks, tokenizers
from wgqa_jax.grouping import variants
from wgqa_jax.models.llama import decilm
from wgqa_jax.store import hf, tokenizer_files


def test_t5_untied_form_is_the_tied_model(tmp_path):
  from transformers import T5ForConditionalGeneration

  make_hf_model(V10).save_pretrained(str(tmp_path / "hf"))
  params, cfg = hf.from_hf(str(tmp_path / "hf"))
  params, cfg = variants.from_mha(params, cfg, "gqa", 2)
  assert cfg.tie_word_embeddings and cfg.scales_decoder_outputs
  hf.save_hf(params, cfg, str(tmp_path / "tied"))
  hf.save_hf(params, cfg, str(tmp_path / "untied"), form="untied")
  config = json.loads((tmp_path / "untied" / "config.json").read_text())
  assert config["tie_word_embeddings"] is False and config["scale_decoder_outputs"] is False
  rng = np.random.default_rng(0)
  ids, dec = rng.integers(2, 97, (2, 9)), rng.integers(2, 97, (2, 5))
  tied = T5ForConditionalGeneration.from_pretrained(str(tmp_path / "tied")).eval()
  untied = T5ForConditionalGeneration.from_pretrained(str(tmp_path / "untied")).eval()
  want = hf_logits(tied, ids, dec)
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(hf_logits(untied, ids, dec), want, atol=1e-5, rtol=1e-5)


def llama(**changes):
  cfg = models.preset("llama-tiny").replace(intermediate_size=256, **changes)
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(0)))
  heads = {("layers_0", "attention"): 1, ("layers_1", "attention"): 4}
  return variants.from_mha(params, cfg, "gqa", 2, module_kv_heads=heads)


def test_decilm_form_holds_per_layer_kv_heads(tmp_path):
  from safetensors.numpy import load_file

  params, cfg = llama()
  with pytest.raises(UserError, match="--export=decilm"):
    hf.save_hf(params, cfg, str(tmp_path / "plain"))
  hf.save_hf(params, cfg, str(tmp_path / "deci"), form="decilm")
  config = json.loads((tmp_path / "deci" / "config.json").read_text())
  assert config["architectures"] == ["DeciLMForCausalLM"]
  assert config["model_type"] == "nemotron-nas" and "num_key_value_heads" not in config
  blocks = config["block_configs"]
  assert [b["attention"]["n_heads_in_group"] for b in blocks] == [4, 1]  # H / G per layer
  for b in blocks:  # the readers' arithmetic gives the FFN width back
    assert decilm.intermediate_size(b["ffn"]["ffn_mult"], config["hidden_size"]) == 256
  weights = load_file(str(tmp_path / "deci" / "model.safetensors"))
  assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (1 * 16, 64)
  assert weights["model.layers.1.self_attn.v_proj.weight"].shape == (4 * 16, 64)
  assert not (tmp_path / "plain").exists()


@pytest.mark.parametrize(
  "changes,needle",
  [
    (dict(intermediate_size=160), "multiple of 256"),
    (dict(head_dim=8), "head_dim = hidden_size / num_heads"),
  ],
)
def test_what_decilm_cannot_hold_is_refused_in_one_line(tmp_path, changes, needle):
  params, cfg = llama()
  cfg = cfg.replace(**changes)
  with pytest.raises(UserError, match=needle) as e:
    hf.exportable(params, cfg, "decilm")
  assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
  texts = [doc for doc, _ in tasks.source("synthetic_summarize", "train", 200)]
  path = str(tmp_path_factory.mktemp("spm") / "spm.model")
  return tokenizers.SentencePieceTokenizer.train_or_load(path, texts, 300)


@pytest.mark.parametrize("arch", ["tiny", "llama-tiny"])
def test_exported_tokenizer_files_give_our_ids_in_transformers(tmp_path, spm, arch):
  from transformers import AutoTokenizer

  cfg = models.family_of(models.preset(arch)).for_tokenizer(models.preset(arch), spm)
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(0)))
  hf.save_hf(params, cfg, str(tmp_path / "export"), tokenizer=spm)
  tok = AutoTokenizer.from_pretrained(str(tmp_path / "export"))
  for text in ["summarize: kato mira nelo.", "Ünïcode ☃ and  spaces\tand 9:40"]:
    ours = spm.encode(text)
    assert tok(text, add_special_tokens=False)["input_ids"] == ours
    # T5's text ends with EOS, as its inputs do; a decoder-only model's with nothing (what
    # lm-evaluation-harness's HF model splits into context and continuation by tokens)
    assert tok(text)["input_ids"] == ours + ([spm.eos_id] if arch == "tiny" else [])
  assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
  assert tok.model_max_length == models.family_of(cfg).context_length(cfg)


def test_a_byte_level_tokenizer_has_no_files_and_is_refused(tmp_path):
  with pytest.raises(UserError, match="no files"):
    tokenizer_files.check(tokenizers.ByteTokenizer())


@pytest.mark.parametrize("tied", [True, False])
def test_t5_untied_form_folds_the_output_scaling_of_tied_and_untied_heads(tied):
  """A T5 whose decoder output is scaled by d_model**-0.5 (v1.0; also an untied head that HF's
  config marks as scaled) exports to the untied form as the same function, scaling folded."""
  from wgqa_jax.models import t5

  cfg = models.preset("tiny").replace(tie_word_embeddings=tied, scale_decoder_outputs=True)
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(1)))
  new, new_cfg = hf.exportable(params, cfg, "untied")
  assert not new_cfg.tie_word_embeddings and not new_cfg.scales_decoder_outputs
  rng = np.random.default_rng(0)
  ids, dec = rng.integers(2, 500, (2, 9)), rng.integers(2, 500, (2, 5))
  want = np.asarray(t5.T5(cfg).apply({"params": params}, ids, dec, np.ones_like(ids)))
  got = np.asarray(t5.T5(new_cfg).apply({"params": new}, ids, dec, np.ones_like(ids)))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
