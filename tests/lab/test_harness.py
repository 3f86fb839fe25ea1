"""wgqa_jax as an lm-evaluation-harness model (wgqa_jax.lab.harness), on tiny models trained here
for a few seconds, with three small local tasks (the harness's own readers: `dataset_path: json`
with `data_files`, `--include_path`): multiple choice (loglikelihood), perplexity
(loglikelihood_rolling, documents longer than the context: several windows) and generation
(generate_until, 16 new tokens, no stop string but EOS).

- Equal to the harness's own HF model (`--model hf`) on the HF export of the same weights, per
  example: log-likelihoods to 1e-5 of their size (float32 both sides; seen: ~1e-7), is-greedy
  flags, and greedy generations (T5: ours is a prefix of HF's, which may run longer: see the
  module's docstring).
- Every variant, those no HF export holds included (per-layer G, KDGQA / DGQA, unequal groups,
  un-folded WGQA): the harness's batched, bucketed, padded requests equal our model on each
  request alone (its forward pass; its decoding), and un-folded WGQA equals its folded form.
- `python -m wgqa_jax.harness` runs the harness's command line; bad input is one line, exit 2.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import lm_eval
import numpy as np
import pytest
from conftest import REPO
from engine_runs import calibration_stats, trained_and_exported
from harness_tasks import NEW_TOKENS, TASKS, write_tasks
from lm_eval.tasks import TaskManager

from wgqa_jax import decoding
from wgqa_jax.data import tasks
from wgqa_jax.decoding import GenerationConfig
from wgqa_jax.grouping import variants
from wgqa_jax.lab.harness import HarnessLM
from wgqa_jax.models import family_of


def evaluate(model, include_path, **kwargs):
  """The harness's simple_evaluate on the three tasks: {task: [per-example responses]}."""
  out = lm_eval.simple_evaluate(
    model=model,
    tasks=TASKS,
    task_manager=TaskManager(include_path=include_path),
    log_samples=True,
    batch_size=4,
    **kwargs,
  )
  return {t: [s["resps"] for s in out["samples"][t]] for t in TASKS}, out["results"]


def trained(tmp_path_factory, config: str):
  """(workdir, params, cfg, tokenizer, HF export, task folder) of a tiny trained MHA model."""
  made = trained_and_exported(tmp_path_factory, config, 80)
  return *made, write_tasks(tmp_path_factory.mktemp("t"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  return trained(tmp_path_factory, "configs/llama_tiny.py")


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
  return trained(tmp_path_factory, "configs/tiny.py")


def assert_equal_responses(ours, theirs, seq2seq_tok=None):
  for task in TASKS:
    assert len(ours[task]) == len(theirs[task]) > 0
    for a, b in zip(ours[task], theirs[task]):
      if task == "wgqa_gen":
        if seq2seq_tok is None:
          assert a == b
        else:  # HF's T5 may generate past max_gen_toks; ours stops there
          assert b[0][0].startswith(a[0][0]), (a, b)
        continue
      assert len(a) == len(b)  # a request per choice (mc), one per document (ppl)
      for (x,), (y,) in zip(a, b):  # a log-likelihood; mc: (log-likelihood, is-greedy)
        if task == "wgqa_ppl":
          np.testing.assert_allclose(x, y, rtol=1e-5)
        else:
          np.testing.assert_allclose(x[0], y[0], rtol=1e-5)
          assert x[1] == y[1]


def test_llama_equals_the_harness_hf_model(llama):
  wd, _, _, tok, hf, include = llama
  ours, _ = evaluate(HarnessLM(checkpoint=str(wd)), include)
  theirs, _ = evaluate("hf", include, model_args=f"pretrained={hf},dtype=float32", device="cpu")
  assert_equal_responses(ours, theirs)
  # the generations are more than EOS: tokens of greedy search to compare (a tiny model: seen
  # 16 of "." and ".." after 80 steps)
  assert sum(len(tok.encode(r[0][0])) for r in ours["wgqa_gen"]) > 10, ours["wgqa_gen"]
  # the long document took several windows of 512 tokens
  assert len(tok.encode(json.loads(open(f"{include}/ppl.jsonl").readlines()[-1])["text"])) > 512


def test_t5_equals_the_harness_hf_model(t5):
  wd, _, _, tok, hf, include = t5
  ours, _ = evaluate(HarnessLM(checkpoint=str(wd)), include)
  theirs, _ = evaluate("hf", include, model_args=f"pretrained={hf},dtype=float32", device="cpu")
  assert_equal_responses(ours, theirs, seq2seq_tok=tok)
  assert sum(len(tok.encode(r[0][0])) for r in ours["wgqa_gen"]) > 10, ours["wgqa_gen"]


# ---- every variant: the harness's batches equal the model on each request alone ----
def variant(name, params, cfg, tok):
  if name == "random-gqa":  # random weights: every output token hangs on every input token
    params = jax.device_get(family_of(cfg).init_params(cfg, jax.random.PRNGKey(7)))
    return variants.from_mha(params, cfg, "gqa", 2)
  if name == "per-layer":  # each layer its own G (no HF form holds it)
    heads = {("layers_0", "attention"): 1, ("layers_1", "attention"): 2}
    return variants.from_mha(
      params, cfg, "svd", 2, calibration=calibration_stats(params, cfg, tok), module_kv_heads=heads
    )
  if name == "asymgqa":  # unequal groups
    return variants.from_mha(params, cfg, "asymgqa", 2, group_sizes=(1, 3))
  return variants.from_mha(params, cfg, name, 2, seed=3)


def alone(params, cfg, tok, lm, request):
  """What our model gives one request alone, unpadded: (log-likelihood of a continuation, its
  greedy flag) or a greedy continuation's text."""
  if request[0] == "gen":  # ("gen", prompt)
    ids = lm.tok_encode(request[1])
    out = decoding.generate(
      params, cfg, np.array([ids], np.int32), GenerationConfig(max_new_tokens=NEW_TOKENS),
      attention_mask=np.ones((1, len(ids)), np.int32),
    )  # fmt: skip
    return tok.decode(np.asarray(out)[0])
  ctx, cont = lm._encode_pair(*request)
  whole = np.array([ctx + cont], np.int32)
  batch = {
    "tokens": whole,
    "segment_ids": np.ones_like(whole),
    "positions": np.arange(whole.shape[1], dtype=np.int32)[None],
  }
  if family_of(cfg).encoder_decoder:  # the encoder reads the context, the decoder the rest
    batch = {"inputs": np.array([ctx], np.int32), "targets": np.array([cont], np.int32)}
  logits, labels, _ = family_of(cfg).forward(params, batch, cfg)
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))[0]
  picked = logp[np.arange(len(labels[0])), np.asarray(labels[0])][-len(cont) :]
  greedy = (logp.argmax(-1) == np.asarray(labels[0]))[-len(cont) :]
  return float(picked.sum()), bool(greedy.all())


class Req:  # what the harness hands a model: .args
  def __init__(self, *args):
    self.args = args


LLAMA_VARIANTS = ["random-gqa", "gqa", "mqa", "wgqa", "kdgqa", "dgqa", "asymgqa", "per-layer"]
# grouped in the decoder (self, cross); a random T5 says EOS first (nothing to compare)
T5_VARIANTS = ["gqa", "wgqa", "kdgqa"]


@pytest.mark.parametrize(
  "family,name", [("llama", v) for v in LLAMA_VARIANTS] + [("t5", v) for v in T5_VARIANTS]
)
def test_every_variant_scores_as_alone(request, family, name):
  _, mha, mha_cfg, tok, _, _ = request.getfixturevalue(family)
  params, cfg = variant(name, mha, mha_cfg, tok)
  lm = HarnessLM(loaded=(params, cfg, tok), batch_size=4)
  docs = [d for d, _ in tasks.source("synthetic_summarize", "test", 6)]
  pairs = [(d, " " + docs[(i + 2) % 6].split(".")[0]) for i, d in enumerate(docs)]
  got = lm.loglikelihood([Req(*p) for p in pairs], disable_tqdm=True)  # 6 rows: one filler
  for p, g in zip(pairs, got):
    want = alone(params, cfg, tok, lm, p)  # (context, continuation)
    np.testing.assert_allclose(g[0], want[0], rtol=1e-5)
    assert g[1] == want[1]
  prompts = [" ".join(d.split()[:9]) for d in docs[:5]]  # cut mid-sentence: continued
  gens = lm.generate_until(
    [Req(p, {"until": [], "max_gen_toks": NEW_TOKENS}) for p in prompts], disable_tqdm=True
  )
  assert gens == [alone(params, cfg, tok, lm, ("gen", p)) for p in prompts]
  assert sum(len(tok.encode(g)) for g in gens) > 5, gens
  if name == "wgqa":  # its learnt weights un-folded score as the folded GQA model
    folded = HarnessLM(loaded=(params, cfg, tok), batch_size=4, fold=True)
    np.testing.assert_allclose(
      [g[0] for g in folded.loglikelihood([Req(*p) for p in pairs], disable_tqdm=True)],
      [g[0] for g in got],
      rtol=1e-5,
    )


@pytest.mark.parametrize("task,total", [("wgqa_mc", 18), ("wgqa_gen", 5)])
def test_a_run_that_stops_keeps_what_it_scored_in_the_cache(
  llama, tmp_path, monkeypatch, task, total
):
  """--use_cache: a run stopped after its first batch has that batch's answers in the cache
  (the harness's partial-result hook), and a second run asks the model for the rest only."""
  import wgqa_jax.lab.harness as harness

  wd, *_, include = llama
  cache = str(tmp_path / "cache")
  batches = {"n": 0}

  def second_batch_fails(real):
    def call(*args, **kwargs):
      batches["n"] += 1
      if batches["n"] == 2:
        raise RuntimeError("stopped")
      return real(*args, **kwargs)

    return call

  run = lambda lm: lm_eval.simple_evaluate(
    model=lm, tasks=[task], task_manager=TaskManager(include_path=include), use_cache=cache,
    batch_size=4,
  )  # fmt: skip
  with monkeypatch.context() as m:
    m.setattr(harness, "token_scores", second_batch_fails(harness.token_scores))
    m.setattr(harness, "generate", second_batch_fails(harness.generate))
    with pytest.raises(RuntimeError, match="stopped"):
      run(HarnessLM(checkpoint=str(wd), batch_size=4))
  asked = []

  class Counting(HarnessLM):
    def loglikelihood(self, requests, disable_tqdm=False):
      asked.extend(requests)
      return super().loglikelihood(requests, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
      asked.extend(requests)
      return super().loglikelihood_rolling(requests, disable_tqdm)

    def generate_until(self, requests, disable_tqdm=False):
      asked.extend(requests)
      return super().generate_until(requests, disable_tqdm)

  results = run(Counting(checkpoint=str(wd), batch_size=4))["results"][task]
  assert results["sample_len"] > 0
  assert 0 < len(asked) < total  # (rolling log-likelihoods are kept per document at its end,
  # as the harness's HF model keeps them)


# ---- the command line ----
def harness(*args):
  return subprocess.run(
    [sys.executable, "-m", "wgqa_jax.harness", *args],
    cwd=REPO, capture_output=True, text=True, timeout=600,
  )  # fmt: skip


def test_command_line_writes_the_harness_results(llama, tmp_path):
  wd, *_, include = llama
  r = harness(
    "--model", "wgqa_jax", "--model_args", f"checkpoint={wd}", "--tasks", "wgqa_mc,wgqa_ppl",
    "--include_path", include, "--limit", "2", "--output_path", str(tmp_path / "out"),
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  (results,) = list((tmp_path / "out").rglob("results_*.json"))
  got = json.loads(results.read_text())
  assert got["results"]["wgqa_mc"]["sample_len"] == 2
  assert got["config"]["model"] == "wgqa_jax"


def test_bad_input_is_one_line_and_exit_2(llama, tmp_path):
  wd, *_, include = llama
  damaged = tmp_path / "damaged"
  damaged.mkdir()
  for f in (wd / "final").iterdir():
    data = f.read_bytes()
    if f.name == "params.safetensors":  # one byte of a tensor flipped
      data = data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]
    (damaged / f.name).write_bytes(data)
  cases = {
    "no such checkpoint": ("--model_args", f"checkpoint={tmp_path / 'nothing'}"),
    "damaged checkpoint": ("--model_args", f"checkpoint={damaged}"),
    "unknown model_args": ("--model_args", f"checkpoint={wd},temperature=3"),
    "no checkpoint": (),
  }
  for what, args in cases.items():
    r = harness("--model", "wgqa_jax", *args, "--tasks", "wgqa_mc", "--include_path", include)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1].startswith("error: ") and "Traceback" not in r.stderr
    assert len([l for l in lines if not l.startswith("WARNING")]) == 1, (what, r.stderr)
  r = harness("--model", "wgqa_jax", "--model_args", f"checkpoint={wd}", "--tasks", "nosuch")
  assert r.returncode == 2 and "nosuch" in r.stderr.splitlines()[-1], r.stderr
