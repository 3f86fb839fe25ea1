"""The train loop (wgqa_jax.train) with the decoder-only family: learning, exact resume on another
mesh, evaluation and native export, and init from a HF Llama with its own BOS-adding tokenizer.
(Its losses: test_objectives.py; how it reads rows: test_causal_view.py.)"""

import json
import os

import numpy as np
import pytest
import torch
from builders import losses, tiny

from wgqa_jax.data import pipeline, tasks, tokenizers
from wgqa_jax.store import params_io
from wgqa_jax.training import trainer


def llama_tiny(**kw):
  return tiny(**{"model.arch": "llama-tiny", **kw})


def test_tiny_llama_learns_resumes_on_another_mesh_evaluates_and_exports_natively(tmp_path):
  from transformers import AutoModelForCausalLM

  from wgqa_jax.tools import convert, evaluate as evaluate_lib

  """One device uninterrupted vs preempted at 15 and resumed on a (data 4, model 2) mesh of the
  8 fake devices: the same losses (heads, KV heads, MLP and vocab split over the model axis)."""
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  kw = dict(num_train_steps=30, **{"optim.loss_on": "answer"})
  last = trainer.train(llama_tiny(**kw), full)
  with pytest.raises(trainer.Preempted):
    trainer.train(llama_tiny(**kw), cut, stop_after=15)
  trainer.train(llama_tiny(**kw, **{"mesh.data": 4, "mesh.model": 2}), cut)
  a, b = losses(full), losses(cut)
  assert a[30] < 0.7 * a[5], a
  np.testing.assert_allclose([b[k] for k in (20, 25, 30)], [a[k] for k in (20, 25, 30)], rtol=2e-5)
  assert {"eval/loss", "eval/rougeLsum", "wgqa/mean"} <= set(last)
  params, cfg = params_io.load(os.path.join(full, "final"))
  assert type(cfg).__name__ == "LlamaConfig" and cfg.grouping.weights == "row"
  assert cfg.eos_token_id == tokenizers.EOS and cfg.pad_token_id == tokenizers.PAD
  assert params["layers_0"]["attention"]["k"].shape == (64, 4, 16)  # WGQA keeps H kernels
  # the evaluate CLI decodes the workdir's model with its settings: the offline default's beams
  out = str(tmp_path / "eval.json")
  assert (
    evaluate_lib.main(
      [
        f"--checkpoint={full}",
        "--split=validation",
        "--num_examples=8",
        "--batch_size=8",
        "--max_decode_length=8",
        f"--out={out}",
      ]
    )
    == 0
  )
  result = json.load(open(out))
  assert result["generation"]["num_beams"] == 4 and len(result["predictions"]) == 8
  # fold + native export: transformers loads G=2 K/V heads with our logits
  export = str(tmp_path / "export")
  assert convert.main([f"--params={full}/final", "--fold", f"--export_hf={export}"]) == 0
  ref = AutoModelForCausalLM.from_pretrained(export).eval()
  assert ref.config.num_key_value_heads == 2
  ids = np.array([[5, 17, 30, 1, 44, 9]], np.int32)
  from wgqa_jax.models import llama

  ours = np.asarray(llama.Llama(cfg).apply({"params": params}, ids))
  with torch.no_grad():
    theirs = ref(input_ids=torch.tensor(ids.astype(np.int64))).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def hf_tokenizer_dir(path, texts):
  """A Llama-style tokenizer built offline: BPE, <unk>=0 <s>=1 </s>=2, BOS added, no pad."""
  from tokenizers import Tokenizer, models as tm, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(tm.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(
    texts,
    trainers.BpeTrainer(
      vocab_size=280, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    ),
  )
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
  )
  fast.save_pretrained(str(path))
  return fast


def test_init_from_a_hf_llama_with_its_bos_tokenizer_converts_on_the_fly(tmp_path):
  from transformers import LlamaConfig, LlamaForCausalLM

  texts = [a + " " + b for a, b in tasks.source("synthetic_summarize", "train", 200)]
  fast = hf_tokenizer_dir(tmp_path / "hf", texts)
  torch.manual_seed(0)
  spec = dict(
    vocab_size=len(fast),
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    head_dim=8,
    bos_token_id=1,
    eos_token_id=2,
  )
  LlamaForCausalLM(LlamaConfig(**spec)).save_pretrained(str(tmp_path / "hf"))
  tok = tokenizers.get_tokenizer(str(tmp_path / "hf"))
  assert tok.prefix == (1,) and tok.eos_id == tok.pad_id == 2  # no pad token: EOS pads
  inp, tgt = pipeline.Tokenize(tok, 64, 16).map(("the cat", "a dog"))
  assert inp[0] == 1 and inp[-1] == 2 and tgt[0] != 1 and tgt[-1] == 2
  run = str(tmp_path / "run")
  trainer.train(
    llama_tiny(
      **{
        "model.init_from": str(tmp_path / "hf"),
        "data.tokenizer": str(tmp_path / "hf"),
        "variant": "gqa",
        "num_train_steps": 4,
        "checkpoint.every": 4,
      }
    ),
    run,
  )
  params, cfg = params_io.load(os.path.join(run, "final"))
  assert cfg.kv_heads == 2 and cfg.grouping.weights == "none" and cfg.eos_token_id == 2
  assert params["layers_1"]["attention"]["k"].shape == (32, 2, 8)
  # a tokenizer whose EOS is not the model's is refused before anything is trained
  with pytest.raises(ValueError, match="ends examples with id 1 but the model's eos_token_id is 2"):
    trainer.train(
      llama_tiny(
        **{"model.init_from": str(tmp_path / "hf"), "data.tokenizer": "bytes", "num_train_steps": 2}
      ),
      str(tmp_path / "bytes"),
    )


def test_loss_on_is_checked_against_the_family(tmp_path):
  from wgqa_jax.training.validation import validate

  with pytest.raises(ValueError, match="optim.loss_on='prompt'"):
    validate(llama_tiny(**{"optim.loss_on": "prompt"}))
  with pytest.raises(ValueError, match="T5 always trains on its targets"):
    trainer.train(tiny(**{"optim.loss_on": "answer"}), str(tmp_path / "t5"))
  assert not os.path.exists(tmp_path / "t5")
