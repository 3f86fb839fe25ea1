"""Our Flax T5 (wgqa_jax.models.t5) equals Hugging Face PyTorch T5 on converted weights (float32,
CPU); its config refuses bad values and still reads files of older layouts."""

import numpy as np
import pytest
from conftest import batch, hf_logits

from wgqa_jax.grouping import variants
from wgqa_jax.grouping.variants import Grouping
from wgqa_jax.models import t5
from wgqa_jax.models.t5.config import T5Config
from wgqa_jax.models.t5.model import relative_position_bucket
from wgqa_jax.store import hf as hf_io


def ours(params, cfg, ids, dec, mask=None, dec_mask=None):
  return np.asarray(t5.T5(cfg).apply({"params": params}, ids, dec, mask, dec_mask))


def test_logits_equal_hf(hf_checkpoint):
  hf, path = hf_checkpoint
  params, cfg = hf_io.from_hf(path)
  assert cfg.tie_word_embeddings == hf.config.scale_decoder_outputs
  ids, mask, dec = batch(cfg.vocab_size)
  np.testing.assert_allclose(
    ours(params, cfg, ids, dec, mask), hf_logits(hf, ids, dec, mask), rtol=1e-5, atol=1e-5
  )


def test_logits_equal_hf_with_decoder_padding(hf_checkpoint):
  hf, path = hf_checkpoint
  params, cfg = hf_io.from_hf(path)
  ids, mask, dec = batch(cfg.vocab_size, seed=3)
  dec_mask = np.ones_like(dec)
  dec_mask[0, -3:] = 0
  got = ours(params, cfg, ids, dec, mask, dec_mask)
  want = hf_logits(hf, ids, dec, mask, dec_mask)
  # Padded decoder positions are never scored; compare the real ones.
  np.testing.assert_allclose(got[dec_mask > 0], want[dec_mask > 0], rtol=1e-5, atol=1e-5)


def test_untied_v11_uses_lm_head_without_scaling(hf_checkpoint):
  hf, path = hf_checkpoint
  params, cfg = hf_io.from_hf(path)
  if cfg.tie_word_embeddings:
    assert "lm_head" not in params and cfg.scales_decoder_outputs
  else:
    assert not cfg.scales_decoder_outputs
    np.testing.assert_array_equal(params["lm_head"], hf.lm_head.weight.detach().numpy().T)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_equal_hf(bidirectional):
  import torch
  from transformers.models.t5.modeling_t5 import T5Attention

  rel = np.arange(-300, 301)[None, :] - np.zeros((1, 1), np.int64)
  want = T5Attention._relative_position_bucket(
    torch.tensor(rel), bidirectional=bidirectional, num_buckets=32, max_distance=128
  ).numpy()
  got = np.asarray(relative_position_bucket(rel, bidirectional, 32, 128))
  np.testing.assert_array_equal(got, want)


def test_dropout_is_active_only_when_not_deterministic(hf_checkpoint):
  import jax

  _, path = hf_checkpoint
  params, cfg = hf_io.from_hf(path)
  cfg = cfg.replace(dropout_rate=0.3)
  ids, mask, dec = batch(cfg.vocab_size)
  m = t5.T5(cfg)
  a = m.apply({"params": params}, ids, dec, mask, deterministic=True)
  b = m.apply({"params": params}, ids, dec, mask, deterministic=True)
  c = m.apply(
    {"params": params}, ids, dec, mask, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)}
  )
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_bfloat16_compute_stays_close(hf_checkpoint):
  hf, path = hf_checkpoint
  params, cfg = hf_io.from_hf(path)
  ids, mask, dec = batch(cfg.vocab_size)
  got = ours(params, cfg.replace(dtype="bfloat16"), ids, dec, mask)
  want = hf_logits(hf, ids, dec, mask)
  assert got.dtype == np.float32
  # bf16 has ~3 significant digits; argmax agreement is what matters for decoding.
  assert np.mean(got.argmax(-1) == want.argmax(-1)) > 0.9
  assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_error_bad_config_values():
  with pytest.raises(ValueError, match="unknown keys"):
    T5Config.from_dict({"d_model": 8, "num_kv_head": 2})
  with pytest.raises(ValueError, match="weights must be one of"):
    T5Config(grouping=Grouping(weights="diagonal"))
  with pytest.raises(ValueError, match="feed_forward_proj"):
    T5Config(feed_forward_proj="gated-gelu-x")
  with pytest.raises(ValueError, match="needs MHA params"):
    variants.from_mha({}, T5Config(grouping=Grouping(kv_heads=2)), "gqa", 2)
  with pytest.raises(ValueError, match=r"unknown variant 'sgqa' \(did you mean 'gqa'\?\)"):
    variants.get("sgqa")


def test_config_files_of_the_flat_layout_still_load(tmp_path):
  """wgqa_config.json written before the grouping section (flat num_kv_heads, wgqa, ...)."""
  flat = {
    **T5Config().to_dict(),
    "num_kv_heads": 2,
    "wgqa": "row",
    "kv_group_sizes": None,
    "group_encoder": True,
  }
  del flat["grouping"]
  cfg = T5Config.from_dict(flat)
  assert cfg.grouping == Grouping(kv_heads=2, weights="row", group_encoder=True)


def test_param_axes_name_kv_heads():
  cfg = T5Config(
    **{
      **dict(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_heads=4,
        num_encoder_layers=1,
        num_decoder_layers=1,
      )
    },
    grouping=Grouping(kv_heads=2),
  )
  axes = t5.param_axes(cfg)
  assert tuple(axes["decoder"]["layers_0"]["self_attention"]["k"]) == ("embed", "kv_heads", "kv")
  assert tuple(axes["encoder"]["layers_0"]["attention"]["k"]) == ("embed", "kv_heads", "kv")
  assert tuple(axes["shared"]["embedding"]) == ("vocab", "embed")
  assert tuple(axes["decoder"]["layers_0"]["mlp"]["wi"]) == ("embed", "mlp")
  wcfg = cfg.replace(grouping=cfg.grouping.replace(weights="row"))
  axes = t5.param_axes(wcfg)
  assert tuple(axes["decoder"]["layers_0"]["cross_attention"]["k"]) == ("embed", "heads", "kv")
  assert tuple(axes["decoder"]["layers_0"]["cross_attention"]["wk"]) == ("heads",)


def test_config_files_that_say_noise_still_load():
  """Grouping's PGQA field was `noise` before it took the run config's name, attention_noise."""
  from wgqa_jax.models.llama.config import LlamaConfig

  nested = {**T5Config().to_dict(), "grouping": {"kv_heads": 2, "noise": 0.3}}
  assert T5Config.from_dict(nested).grouping == Grouping(kv_heads=2, attention_noise=0.3)
  flat = {**T5Config().to_dict(), "num_kv_heads": 2, "attention_noise": 0.2}
  del flat["grouping"]
  assert T5Config.from_dict(flat).grouping.attention_noise == 0.2
  llama = {**LlamaConfig().to_dict(), "grouping": {"kv_heads": 2, "noise": 0.1}}
  assert LlamaConfig.from_dict(llama).grouping.attention_noise == 0.1
