"""What a model name names, resolved once (wgqa_jax.store.resolve): the config first, the
weights when asked; a HF T5 v1.1's weights correct what its config.json says about tied heads."""

import jax
import ml_collections
import pytest

from wgqa_jax import models
from wgqa_jax.store import generation_file as settings, params_io
from wgqa_jax.store.resolve import RANDOM, resolve


def open_source(section):
  return resolve(section.init_from, section.arch)


def section(init_from, arch="tiny"):
  return ml_collections.ConfigDict({"init_from": init_from, "arch": arch})


def test_a_random_preset_has_the_offline_settings_and_no_weights():
  src = open_source(section(RANDOM, "llama-tiny"))
  assert src.is_random and src.cfg == models.preset("llama-tiny")
  assert src.generation_settings == settings.OFFLINE_DEFAULT and src.open_weights() is None


def test_a_hf_dir_gives_its_config_then_its_weights(hf_checkpoint):
  hf, path = hf_checkpoint
  src = open_source(section(path))
  assert src.reader is None and src.cfg.num_heads == hf.config.num_heads
  assert src.tokenizer is None  # save_pretrained of a bare model writes no tokenizer
  reader = src.open_weights()
  assert reader is not None and src.open_weights() is reader  # opened once
  # transformers 5 writes tie_word_embeddings=true for an untied v1.1: the weights decide
  assert src.cfg == reader.cfg
  assert src.cfg.tie_word_embeddings == (hf.config.feed_forward_proj == "relu")


def test_our_params_dir_keeps_its_generation_settings(tmp_path):
  cfg = models.preset("tiny")
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(0)))
  kept = {"task_specific_params": {"summarization": {"num_beams": 3}}}
  params_io.save(params, cfg, str(tmp_path / "p"), kept)
  src = open_source(section(str(tmp_path / "p")))
  assert src.cfg == cfg and src.generation_settings == kept and src.reader is None
  assert src.open_weights().cfg == cfg


def test_a_missing_checkpoint_is_one_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
    open_source(section(str(tmp_path / "nope")))


def test_a_hf_dir_with_its_tokenizer_is_a_checkpoint_and_a_workdir_without_params_is_named(
  hf_checkpoint, tmp_path
):
  """A HF checkpoint holds a tokenizer.json and a config.json, as a training workdir does: what
  marks a workdir is what only a run writes (metrics, checkpoints, its lock)."""
  import shutil

  _, path = hf_checkpoint
  hf_dir = tmp_path / "hf"
  shutil.copytree(path, hf_dir)
  (hf_dir / "tokenizer.json").write_text("{}")
  src = resolve(str(hf_dir))
  assert src.kind == "hf" and src.tokenizer == str(hf_dir)
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text("")
  with pytest.raises(FileNotFoundError, match="a training workdir with no best/ or final/ yet"):
    resolve(str(run))
