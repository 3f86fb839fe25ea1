"""Uptraining the decoder-only family: the causal view of the pipeline's rows, the causal-LM loss
against HF PyTorch `LlamaForCausalLM(labels=...)`, packed rows against each example alone, the
train loop (learning, exact resume, evaluation, native export) and init from a HF Llama with its
own BOS-adding tokenizer."""
import json
import os

import jax
import numpy as np
import pytest
import torch

from wgqa_jax import causal_view, data, objectives, params_io, pipeline, tokenizers, train, variants
from test_llama import hf_model, save
from test_train import losses, tiny


def llama_tiny(**kw):
  return tiny(**{"model.arch": "llama-tiny", **kw})


def rows_of(n=12, li=160, lt=96):
  """(examples, padded rows, packed rows) of the synthetic task, byte-tokenized."""
  tok = tokenizers.ByteTokenizer()
  examples = [pipeline.Tokenize(tok, li, lt).map(p)
              for p in data.source("synthetic_translate", "train", n)]
  padded = pipeline.pad_rows(examples, li, lt, tok.pad_id)
  packed = pipeline.pack_rows(examples, li, lt, tok.pad_id)
  assert packed["inputs_segment_ids"].max() >= 2  # rows really hold several examples
  return examples, padded, packed


def python_sequences(examples_by_row, length):
  """The causal view built by hand: per row, each example's input then target."""
  out = []
  for row in examples_by_row:
    tokens, pos, answer = [], [], []
    for inp, tgt in row:
      tokens += list(inp) + list(tgt)
      pos += list(range(len(inp) + len(tgt)))
      answer += [False] * len(inp) + [True] * len(tgt)
    out.append((tokens, pos, answer))
  assert all(len(t) <= length for t, _, _ in out)
  return out


def test_sequences_and_prompts_match_a_python_reference():
  examples, padded, packed = rows_of()
  by_row = [[examples[i]] for i in range(len(examples))]
  rows = []  # the packed rows' examples, from their segment ids
  for r in range(len(packed["inputs"])):
    rows.append([(packed["inputs"][r][packed["inputs_segment_ids"][r] == s],
                  packed["targets"][r][packed["targets_segment_ids"][r] == s])
                 for s in range(1, packed["inputs_segment_ids"][r].max() + 1)])
  for batch, want in ((padded, python_sequences(by_row, 256)), (packed, python_sequences(rows, 256))):
    got = jax.tree.map(np.asarray, causal_view.sequences(batch, tokenizers.EOS))
    for r, (tokens, pos, answer) in enumerate(want):
      n = len(tokens)
      np.testing.assert_array_equal(got["tokens"][r, :n], tokens)
      np.testing.assert_array_equal(got["positions"][r, :n], pos)
      np.testing.assert_array_equal(got["answer"][r, :n], answer)
      assert (got["segment_ids"][r, :n] > 0).all() and (got["segment_ids"][r, n:] == 0).all()
      assert not got["answer"][r, n:].any()
  # generation prompts: each input row left-padded, the mask on its tokens
  ids, mask = (np.asarray(x) for x in causal_view.prompts(padded["inputs"], tokenizers.EOS, 0))
  for r, (inp, _) in enumerate(examples):
    np.testing.assert_array_equal(ids[r, -len(inp):], inp)
    assert mask[r].sum() == len(inp) and mask[r, -len(inp):].all() and (ids[r][mask[r] == 0] == 0).all()


def test_a_pad_that_equals_eos_is_still_padding():
  """HF tokenizers without a pad token pad with EOS: the rows end at their first EOS."""
  inputs = np.array([[5, 6, 1, 1, 1], [7, 1, 1, 1, 1]], np.int32)
  targets = np.array([[8, 1, 1], [1, 1, 1]], np.int32)
  s = causal_view.sequences({"inputs": inputs, "targets": targets}, eos_id=1)
  np.testing.assert_array_equal(np.asarray(s["tokens"])[:, :5], [[5, 6, 1, 8, 1], [7, 1, 1, 1, 1]])
  np.testing.assert_array_equal(np.asarray(s["segment_ids"]) > 0,
                                [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("loss_on", ["all", "answer"])
def test_causal_loss_equals_hf_llama_labels_loss_on_padded_and_packed_rows(tmp_path, loss_on):
  """Sum of token losses of every row layout == HF LlamaForCausalLM's mean loss (labels = the
  sequence, -100 on the prompt for "answer") times its token count, example by example."""
  from wgqa_jax import hf
  model = hf_model("llama", 4, vocab_size=300, eos_token_id=tokenizers.EOS)  # byte ids
  params, cfg = hf.from_hf(save(model, tmp_path / "hf"))
  examples, padded, packed = rows_of()
  want_sum, want_n = 0.0, 0
  for inp, tgt in examples:
    seq = torch.tensor(np.concatenate([inp, tgt])[None].astype(np.int64))
    labels = seq.clone()
    if loss_on == "answer":
      labels[0, :len(inp)] = -100
    with torch.no_grad():
      out = model(input_ids=seq, labels=labels)
    n = int((labels[0, 1:] != -100).sum())
    want_sum, want_n = want_sum + float(out.loss) * n, want_n + n
  for rows in (padded, packed):
    lsum, n, nll = objectives.loss_sums(params, rows, None, cfg, 0.0, 0.0, False, loss_on)
    assert int(n) == want_n
    np.testing.assert_allclose([float(lsum), float(nll)], [want_sum, want_sum], rtol=1e-5)


def test_packed_grouped_rows_give_each_example_its_loss_alone():
  """WGQA with segment ids: each example's summed loss inside a packed row equals its loss in a
  row of its own (a random tiny Llama, f32)."""
  from wgqa_jax.models import llama
  from wgqa_jax.models.llama_config import LlamaConfig, PRESETS
  cfg = LlamaConfig(**{**PRESETS["llama-tiny"], "vocab_size": 300, "eos_token_id": 1})
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  params, cfg = variants.from_mha(params, cfg, "randwgqa", 2, seed=3)
  examples, padded, packed = rows_of()
  nll = jax.jit(lambda batch: objectives.loss_sums(params, batch, None, cfg, 0.0, 0.0, False)[2])
  alone = [float(nll(jax.tree.map(lambda x: x[i:i + 1], padded))) for i in range(len(examples))]
  got = float(nll(packed))
  np.testing.assert_allclose(got, sum(alone), rtol=2e-5)
  # the packed loss is not blind to the segments: without them examples see each other
  mixed = {k: v for k, v in packed.items() if not k.endswith("segment_ids")}
  mixed = {**mixed, "inputs_segment_ids": (packed["inputs_segment_ids"] > 0).astype(np.int32),
           "targets_segment_ids": (packed["targets_segment_ids"] > 0).astype(np.int32)}
  assert abs(float(nll(mixed)) - got) > 1e-3


def test_tiny_llama_learns_resumes_on_another_mesh_evaluates_and_exports_natively(tmp_path):
  from transformers import AutoModelForCausalLM
  from wgqa_jax import convert
  from wgqa_jax import evaluate as evaluate_lib
  """One device uninterrupted vs preempted at 15 and resumed on a (data 4, model 2) mesh of the
  8 fake devices: the same losses (heads, KV heads, MLP and vocab split over the model axis)."""
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  kw = dict(num_train_steps=30, **{"optim.loss_on": "answer"})
  last = train.train(llama_tiny(**kw), full)
  with pytest.raises(train.Preempted):
    train.train(llama_tiny(**kw), cut, stop_after=15)
  train.train(llama_tiny(**kw, **{"mesh.data": 4, "mesh.model": 2}), cut)
  a, b = losses(full), losses(cut)
  assert a[30] < 0.7 * a[5], a
  np.testing.assert_allclose([b[k] for k in (20, 25, 30)], [a[k] for k in (20, 25, 30)],
                             rtol=2e-5)
  assert {"eval/loss", "eval/rougeLsum", "wgqa/mean"} <= set(last)
  params, cfg = params_io.load(os.path.join(full, "final"))
  assert type(cfg).__name__ == "LlamaConfig" and cfg.grouping.weights == "row"
  assert cfg.eos_token_id == tokenizers.EOS and cfg.pad_token_id == tokenizers.PAD
  assert params["layers_0"]["attention"]["k"].shape == (64, 4, 16)  # WGQA keeps H kernels
  # the evaluate CLI decodes the workdir's model with its settings: the offline default's beams
  out = str(tmp_path / "eval.json")
  assert evaluate_lib.main([f"--checkpoint={full}", "--split=validation", "--num_examples=8",
                            "--batch_size=8", "--max_decode_length=8", f"--out={out}"]) == 0
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
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=280, special_tokens=[
      "<unk>", "<s>", "</s>"], show_progress=False))
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>")
  fast.save_pretrained(str(path))
  return fast


def test_init_from_a_hf_llama_with_its_bos_tokenizer_converts_on_the_fly(tmp_path):
  from transformers import LlamaConfig, LlamaForCausalLM
  texts = [a + " " + b for a, b in data.source("synthetic_summarize", "train", 200)]
  fast = hf_tokenizer_dir(tmp_path / "hf", texts)
  torch.manual_seed(0)
  spec = dict(vocab_size=len(fast), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, head_dim=8, bos_token_id=1, eos_token_id=2)
  LlamaForCausalLM(LlamaConfig(**spec)).save_pretrained(str(tmp_path / "hf"))
  tok = tokenizers.get_tokenizer(str(tmp_path / "hf"))
  assert tok.prefix == (1,) and tok.eos_id == tok.pad_id == 2  # no pad token: EOS pads
  inp, tgt = pipeline.Tokenize(tok, 64, 16).map(("the cat", "a dog"))
  assert inp[0] == 1 and inp[-1] == 2 and tgt[0] != 1 and tgt[-1] == 2
  run = str(tmp_path / "run")
  train.train(llama_tiny(**{"model.init_from": str(tmp_path / "hf"),
                            "data.tokenizer": str(tmp_path / "hf"), "variant": "gqa",
                            "num_train_steps": 4, "checkpoint.every": 4}), run)
  params, cfg = params_io.load(os.path.join(run, "final"))
  assert cfg.kv_heads == 2 and cfg.grouping.weights == "none" and cfg.eos_token_id == 2
  assert params["layers_1"]["attention"]["k"].shape == (32, 2, 8)
  # a tokenizer whose EOS is not the model's is refused before anything is trained
  with pytest.raises(ValueError, match="ends examples with id 1 but the model's eos_token_id is 2"):
    train.train(llama_tiny(**{"model.init_from": str(tmp_path / "hf"), "data.tokenizer": "bytes",
                              "num_train_steps": 2}), str(tmp_path / "bytes"))


def test_loss_on_is_checked_against_the_family(tmp_path):
  from wgqa_jax.train_config import validate
  with pytest.raises(ValueError, match="optim.loss_on='prompt'"):
    validate(llama_tiny(**{"optim.loss_on": "prompt"}))
  with pytest.raises(ValueError, match="T5 always trains on its targets"):
    train.train(tiny(**{"optim.loss_on": "answer"}), str(tmp_path / "t5"))
  assert not os.path.exists(tmp_path / "t5")
