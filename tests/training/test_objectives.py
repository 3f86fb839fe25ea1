"""The training losses (wgqa_jax.training.objectives): T5's with label smoothing and z-loss against
numpy, the causal-LM loss against HF PyTorch `LlamaForCausalLM(labels=...)`, and packed rows (T5 and
Llama, grouped variants) giving each example its loss alone."""

import os

import jax
import numpy as np
import pytest
import torch
from builders import rows_of, tiny_model_and_batch
from hf_llama import hf_model, save

from wgqa_jax.data import tokenizers
from wgqa_jax.grouping import variants
from wgqa_jax.training import objectives


@pytest.mark.parametrize("loss_on", ["all", "answer"])
def test_causal_loss_equals_hf_llama_labels_loss_on_padded_and_packed_rows(tmp_path, loss_on):
  """Sum of token losses of every row layout == HF LlamaForCausalLM's mean loss (labels = the
  sequence, -100 on the prompt for "answer") times its token count, example by example."""
  from wgqa_jax.store import hf

  model = hf_model("llama", 4, vocab_size=300, eos_token_id=tokenizers.EOS)  # byte ids
  params, cfg = hf.from_hf(save(model, tmp_path / "hf"))
  examples, padded, packed = rows_of()
  want_sum, want_n = 0.0, 0
  for inp, tgt in examples:
    seq = torch.tensor(np.concatenate([inp, tgt])[None].astype(np.int64))
    labels = seq.clone()
    if loss_on == "answer":
      labels[0, : len(inp)] = -100
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
  from wgqa_jax.models.llama.config import PRESETS, LlamaConfig

  cfg = LlamaConfig(**{**PRESETS["llama-tiny"], "vocab_size": 300, "eos_token_id": 1})
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  params, cfg = variants.from_mha(params, cfg, "randwgqa", 2, seed=3)
  examples, padded, packed = rows_of()
  nll = jax.jit(lambda batch: objectives.loss_sums(params, batch, None, cfg, 0.0, 0.0, False)[2])
  alone = [float(nll(jax.tree.map(lambda x: x[i : i + 1], padded))) for i in range(len(examples))]
  got = float(nll(packed))
  np.testing.assert_allclose(got, sum(alone), rtol=2e-5)
  # the packed loss is not blind to the segments: without them examples see each other
  mixed = {k: v for k, v in packed.items() if not k.endswith("segment_ids")}
  mixed = {
    **mixed,
    "inputs_segment_ids": (packed["inputs_segment_ids"] > 0).astype(np.int32),
    "targets_segment_ids": (packed["targets_segment_ids"] > 0).astype(np.int32),
  }
  assert abs(float(nll(mixed)) - got) > 1e-3


def test_loss_with_label_smoothing_and_z_loss_matches_numpy():
  from wgqa_jax.models import t5

  cfg, params, batch = tiny_model_and_batch()
  dec_in = t5.shift_right(batch["targets"])
  logits = np.asarray(t5.T5(cfg).apply({"params": params}, batch["inputs"], dec_in), np.float64)
  logz = np.log(np.exp(logits).sum(-1))
  logp = logits - logz[..., None]
  nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  ls, z = 0.1, 1e-3
  want = (1 - ls) * nll - ls * logp.mean(-1) + z * logz**2
  w = batch["targets"] != 0
  lsum, n, nllsum = objectives.loss_sums(params, batch, None, cfg, ls, z, False)
  assert float(n) == w.sum() == 8
  np.testing.assert_allclose(float(lsum), want[w].sum(), rtol=1e-5)
  np.testing.assert_allclose(float(nllsum), nll[w].sum(), rtol=1e-5)


# ------------------------------------------------------------------- packing ----
@pytest.mark.parametrize("variant", ["wgqa", "asymgqa", "dgqa"])
def test_packed_rows_give_each_example_its_unpacked_loss(variant):
  """Several examples per row, segment ids keeping them apart in the encoder, the decoder's
  self- and cross-attention and the relative position bias: each example's summed token loss
  equals its loss alone in a padded row (numbers of a random v1.1 model, f32)."""
  from wgqa_jax.data import pipeline, tasks, tokenizers
  from wgqa_jax.models import t5
  from wgqa_jax.models.t5.config import preset

  cfg = preset("tiny", vocab_size=300)
  params = t5.init_params(cfg, jax.random.PRNGKey(0))
  sizes = (1, 3) if variant == "asymgqa" else None
  params, cfg = variants.from_mha(params, cfg, variant, 2, group_sizes=sizes, seed=1)
  tok = tokenizers.ByteTokenizer()
  examples = [
    pipeline.Tokenize(tok, 160, 96).map(p) for p in tasks.source("synthetic_translate", "train", 24)
  ]
  packed = pipeline.pack_rows(examples, 160, 96, tok.pad_id)
  assert packed["inputs_segment_ids"].max() >= 2  # rows really hold several examples
  nll = jax.jit(lambda batch: objectives.loss_sums(params, batch, None, cfg, 0.0, 0.0, False)[2])
  per_row = jax.vmap(lambda row: nll(jax.tree.map(lambda x: x[None], row)))
  alone = per_row(pipeline.pad_rows(examples, 160, 96, tok.pad_id))  # one example per row
  # each example's loss inside its packed row: mask the row's other segments out of the sum
  got = []
  for r in range(len(packed["inputs"])):
    for seg in range(1, packed["targets_segment_ids"][r].max() + 1):
      row = {k: v[r : r + 1] for k, v in packed.items()}
      keep = row["targets_segment_ids"] == seg
      got.append(
        float(
          nll(
            {
              **row,
              "targets": np.where(keep | (row["targets_segment_ids"] == 0), row["targets"], 0),
            }
          )
        )
      )
  want = [float(alone[i]) for i in _packing_order(examples, packed)]
  np.testing.assert_allclose(got, want, rtol=2e-5)
  np.testing.assert_allclose(float(nll(packed)), float(np.sum(alone)), rtol=2e-5)


def _packing_order(examples, packed):
  """Indices of `examples` in the order pack_rows placed them (row by row, segment by segment)."""
  key = {(a.tobytes(), b.tobytes()): i for i, (a, b) in enumerate(examples)}
  order = []
  for r in range(len(packed["inputs"])):
    for seg in range(1, packed["targets_segment_ids"][r].max() + 1):
      inp = packed["inputs"][r][packed["inputs_segment_ids"][r] == seg]
      tgt = packed["targets"][r][packed["targets_segment_ids"][r] == seg]
      order.append(key[(inp.tobytes(), tgt.tobytes())])
  return order


# ------------------------------------------------------------------- attention backends ----
@pytest.mark.parametrize("backend", ["dot_product", "blockwise"])
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_other_attention_forms_equal_the_einsum_form(family, backend, monkeypatch):
  """model.attention="dot_product" (jax.nn.dot_product_attention's XLA form here) and
  "blockwise" (keys in blocks of 16 here, with an online softmax): the same loss and gradients
  as the einsum form on padded and packed rows of a grouped (WGQA G=2)
  model, T5's trainable position bias included (f32: the loss to 1e-5, each gradient to 1e-5
  of its largest entry), and the same greedy tokens from the cached decoder."""
  from wgqa_jax import decoding
  from wgqa_jax.decoding.settings import GenerationConfig
  from wgqa_jax.models import attention as attention_module, family_of, llama, t5
  from wgqa_jax.models.llama.config import PRESETS, LlamaConfig
  from wgqa_jax.models.t5.config import preset

  monkeypatch.setattr(attention_module, "KEY_BLOCK", 16)  # rows of 160 / 96: several blocks
  monkeypatch.setattr(attention_module, "QUERY_BLOCK", 48)  # R x t = 320 / 192 rows: padded chunks
  if family == "t5":
    cfg = preset("tiny", vocab_size=300)
  else:
    cfg = LlamaConfig(**{**PRESETS["llama-tiny"], "vocab_size": 300, "eos_token_id": 1})
  params = (t5 if family == "t5" else llama).init_params(cfg, jax.random.PRNGKey(0))
  params, cfg = variants.from_mha(params, cfg, "randwgqa", 2, seed=3)
  _, padded, packed = rows_of(n=8)
  for rows in (padded, packed):
    got, programs = {}, {}
    for attention in ("einsum", backend):
      c = cfg.replace(attention=attention)
      loss = lambda p: objectives.loss_sums(p, rows, None, c, 0.0, 0.0, False)[0]  # noqa: B023
      got[attention] = jax.jit(jax.value_and_grad(loss))(params)
      programs[attention] = str(jax.make_jaxpr(loss)(params))
    assert programs[backend] != programs["einsum"]  # the backend really ran
    np.testing.assert_allclose(got[backend][0], got["einsum"][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got[backend][1]), jax.tree.leaves(got["einsum"][1])):
      # summed-loss gradients, summed in another order: within 1e-5 of each tensor's scale
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
  assert family_of(cfg).name == family
  gen = GenerationConfig(max_new_tokens=8)
  tokens = {
    a: np.asarray(decoding.generate(params, cfg.replace(attention=a), padded["inputs"][:2], gen))
    for a in ("einsum", backend)
  }
  np.testing.assert_array_equal(tokens[backend], tokens["einsum"])


def test_cudnn_fallback_rule_and_one_line_refusals():
  """dot_product runs cuDNN exactly where cudnn_refusal has no objection; attention=cudnn is
  refused in one line where it cannot run (here, on CPU, before anything is read); the run
  says which steps use another form."""
  from builders import tiny

  from wgqa_jax.core.errors import UserError
  from wgqa_jax.models.attention import cudnn_refusal
  from wgqa_jax.models.family import preset
  from wgqa_jax.training import preflight

  assert cudnn_refusal("bfloat16", 64, "gpu") is None
  assert cudnn_refusal("float16", 128, "gpu") is None
  assert "float32" in cudnn_refusal("float32", 64, "gpu")
  assert "not 256" in cudnn_refusal("bfloat16", 256, "gpu")
  assert "not 12" in cudnn_refusal("bfloat16", 12, "gpu")
  assert "these devices are cpu" in cudnn_refusal("bfloat16", 64, "cpu")

  src = preset("tiny")  # T5, 16-dim heads, dropout 0.1
  run = lambda **kw: tiny(**{"model.dtype": "bfloat16", "model.dropout_rate": 0.0, **kw})
  assert preflight.attention_notes(run(**{"model.attention": "dot_product"}), src, "gpu") == []
  assert preflight.attention_notes(run(**{"model.attention": "cudnn"}), src, "gpu") == []
  with pytest.raises(
    UserError, match=r"model.attention=cudnn: cuDNN .* these devices are cpu; use"
  ):
    preflight.attention_notes(run(**{"model.attention": "cudnn"}), src, "cpu")
  (note,) = preflight.attention_notes(run(**{"model.attention": "dot_product"}), src, "cpu")
  assert note.startswith("attention: dot_product runs its XLA form: cuDNN")
  unequal = run(**{"model.attention": "cudnn", "grouping.variant": "kdgqa"})
  with pytest.raises(UserError, match="kdgqa gives query heads unequal groups"):
    preflight.attention_notes(unequal, src, "gpu")
  (note,) = preflight.attention_notes(
    run(**{"model.dropout_rate": 0.1, "model.attention": "cudnn"}), src, "gpu"
  )
  assert "training steps use the einsum form (dropout" in note
  # MLA attends over its latent with einsums: said for any other form, refused for cudnn
  mla = lambda form: run(**{"model.attention": form, "grouping.variant": "mla"})
  with pytest.raises(UserError, match="mla attends over a latent"):
    preflight.attention_notes(mla("cudnn"), src, "gpu")
  assert preflight.attention_notes(mla("blockwise"), src, "gpu") == [
    "attention: mla attends over its latent in the einsum form"
  ]
  assert preflight.attention_notes(mla("einsum"), src, "gpu") == []
  # the run itself: refused before its workdir holds anything
  import tempfile

  from wgqa_jax.training import trainer

  with tempfile.TemporaryDirectory() as d:
    with pytest.raises(UserError, match="cudnn"):
      trainer.train(run(**{"model.attention": "cudnn"}), d)
    assert [f for f in os.listdir(d) if not f.startswith(".")] == []


def test_the_loss_in_chunks_of_positions_equals_the_whole(monkeypatch):
  """A decoder-only loss over chunks of positions (each chunk's logits made, and made again in
  the backward pass, alone): the same sums and gradients as over the whole rows, padded and
  packed, label smoothing and z-loss included (7 positions a chunk: a padded last chunk)."""
  from wgqa_jax.models import llama
  from wgqa_jax.models.llama.config import PRESETS, LlamaConfig

  cfg = LlamaConfig(**{**PRESETS["llama-tiny"], "vocab_size": 300, "eos_token_id": 1})
  params = llama.init_params(cfg, jax.random.PRNGKey(0))
  _, padded, packed = rows_of(n=8)
  for rows in (padded, packed):
    got = {}
    for chunk in (10**9, 7):
      monkeypatch.setattr(objectives, "LOSS_CHUNK", chunk)
      loss = lambda p: objectives.loss_sums(p, rows, None, cfg, 0.1, 1e-3, False)  # noqa: B023
      got[chunk] = jax.jit(jax.value_and_grad(lambda p: loss(p)[0]))(params), jax.jit(loss)(params)
      assert (chunk == 7) == ("scan" in str(jax.make_jaxpr(loss)(params)))  # chunked only then
    (whole, whole_g), whole_sums = got[10**9]
    (part, part_g), part_sums = got[7]
    np.testing.assert_allclose(part_sums, whole_sums, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(part_g), jax.tree.leaves(whole_g), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
