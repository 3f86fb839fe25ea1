"""Decoder-only (Llama-shaped) numbers, side by side in one run on this device:

    python benchmarks/llama.py                 # -> benchmarks/RESULTS_llama.md
    python benchmarks/llama.py --smoke         # seconds; what tests/tools/test_benchmarks.py runs

1. KV-cache bytes and cached decode tokens/s for MHA vs GQA vs MQA (converted from one MHA
   model by mean-pooling), at long contexts: N greedy steps on a cache that already holds the
   context (the prompt pass is not counted; best of 5).
2. Train step (causal LM loss, backward, AdamW) of ours vs HF PyTorch LlamaForCausalLM on the
   same batch and weights, float32.
"""

import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from wgqa_jax.core import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = {  # a Llama-shaped model small enough for 2 CPU cores
  "cpu": dict(
    vocab_size=8000,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    head_dim=64,
  ),
  "smoke": dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=16,
  ),
}


def best_of(f, n=3):
  f()  # compile
  times = []
  for _ in range(n):
    t = time.perf_counter()
    f()
    times.append(time.perf_counter() - t)
  return min(times)


def hf_model(spec):
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(0)
  return LlamaForCausalLM(LlamaConfig(**spec, max_position_embeddings=8192)).eval()


def decode_steps(params, cfg, batch, context, new_tokens):
  """`new_tokens` cached greedy steps after a cache already holding `context` tokens (random
  K/V: a step costs the same whatever they are), the prompt pass left out."""
  from wgqa_jax.models.llama import Llama

  fn = _decode_fns.get((cfg, batch, context, new_tokens))
  if fn is None:
    m = Llama(cfg)

    @jax.jit
    def fn(params):
      cache = m.apply({"params": params}, batch, context + new_tokens, method=Llama.init_cache)
      key = jax.random.PRNGKey(0)
      cache = [
        {
          k: jax.random.normal(jax.random.fold_in(key, i), v.shape, v.dtype) * 0.1
          for k, v in c.items()
        }
        for i, c in enumerate(cache)
      ]
      mask = jnp.ones((batch, context + new_tokens), jnp.int32)

      def step(i, carry):
        tok, cache = carry
        logits, cache = m.apply(
          {"params": params},
          tok[:, None],
          jnp.full((batch, 1), context + i),
          cache,
          context + i,
          mask,
          method=Llama.extend,
        )
        return jnp.argmax(logits, -1).astype(jnp.int32), cache

      return jax.lax.fori_loop(0, new_tokens, step, (jnp.zeros((batch,), jnp.int32), cache))[0]

    _decode_fns[(cfg, batch, context, new_tokens)] = fn
  return jax.block_until_ready(fn(params))


_decode_fns = {}


def decode_section(spec, contexts, batch, new_tokens, tmp):
  from wgqa_jax.grouping import variants
  from wgqa_jax.store import hf

  hf_model(spec).save_pretrained(tmp, safe_serialization=True)
  mha_params, mha_cfg = hf.from_hf(tmp)
  h = mha_cfg.num_heads
  rows = [
    "| context | batch | variant | KV cache | cache / MHA | decode tokens/s | vs MHA |",
    "|---|---|---|---|---|---|---|",
  ]
  for context in contexts:
    base = None
    g_mid = h // 4 if h >= 8 else h // 2
    for name, g in (("MHA", h), (f"GQA-{g_mid}", g_mid), ("MQA", 1)):
      params, cfg = (
        (mha_params, mha_cfg)
        if g == h
        else variants.from_mha(mha_params, mha_cfg, "mqa" if g == 1 else "gqa", g)
      )
      params = jax.device_put(params)
      rate = (
        batch
        * new_tokens
        / best_of(lambda: decode_steps(params, cfg, batch, context, new_tokens), n=5)
      )
      cache = 2 * cfg.num_layers * batch * (context + new_tokens) * cfg.kv_heads * cfg.head_dim * 4
      base = base or (cache, rate)
      rows.append(
        f"| {context} | {batch} | {name} | {cache / 2**20:.2f} MiB | "
        f"{cache / base[0]:.3f} | {rate:.0f} | {rate / base[1]:.2f}x |"
      )
      print(rows[-1], flush=True)
  return rows


def train_section(spec, batch, length):
  """Our train step (wgqa_jax.training.steps: causal view of (input, target) rows, loss,
  backward, global norm clipping, AdamW, NaN guard) vs HF PyTorch on the same sequences (labels =
  the sequence)."""
  import optax  # noqa: F401  (imported by train_step)
  import torch

  from wgqa_jax.store import hf
  from wgqa_jax.training import steps as train_step
  from wgqa_jax.training.config import base_config

  model = hf_model(spec).train()
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  cfg = hf.config_from_hf({**model.config.to_dict(), "model_type": "llama"}, sd)
  params = hf.hf_to_params(sd, cfg)
  eos = cfg.eos_token_id
  ids = np.random.default_rng(0).integers(eos + 1, spec["vocab_size"], (batch, length))
  half = length // 2
  ids[:, half - 1] = ids[:, -1] = eos  # input EOS target EOS, one example per row
  optim = base_config().optim
  tx, _ = train_step.make_optimizer(optim, total_steps=1000)
  step = jax.jit(train_step.make_train_step(cfg, optim, tx), donate_argnums=(0,))
  state = [{"step": jnp.zeros((), jnp.int32), "params": jax.device_put(params)}]
  state[0]["opt_state"] = tx.init(state[0]["params"])
  rows = {
    "inputs": jnp.asarray(ids[:, :half], jnp.int32),
    "targets": jnp.asarray(ids[:, half:], jnp.int32),
  }

  def ours():
    state[0], out = step(state[0], rows, jax.random.PRNGKey(0))
    jax.block_until_ready(out["loss"])

  opt = torch.optim.AdamW(model.parameters(), lr=optim.learning_rate, weight_decay=0.0)
  tx_ids = torch.tensor(ids)

  def theirs():
    opt.zero_grad()
    model(input_ids=tx_ids, labels=tx_ids).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
    opt.step()

  t_ours, t_hf = best_of(ours), best_of(theirs)
  return [
    "| | seconds / step | HF / ours |",
    "|---|---|---|",
    f"| ours (wgqa_jax.train step, jit, float32) | {t_ours:.3f} | {t_hf / t_ours:.2f}x |",
    f"| HF PyTorch LlamaForCausalLM | {t_hf:.3f} | 1.00x |",
  ]


FLAGS = cli.flag_set()
flags.DEFINE_bool(
  "smoke", False, "a seconds-long run on a tiny shape (tests run it)", flag_values=FLAGS
)
flags.DEFINE_string(
  "out", None, "default: benchmarks/RESULTS_llama.md (RESULTS_llama_smoke.md)", flag_values=FLAGS
)


def main(argv: list[str] | None = None) -> int:
  a = cli.parse(FLAGS, argv, "benchmarks/llama.py")
  spec = SHAPES["smoke" if a.smoke else "cpu"]
  contexts, batch, new = ((32,), 2, 4) if a.smoke else ((512, 2048, 4096), 4, 32)
  out = a.out or os.path.join(
    REPO, "benchmarks", "RESULTS_llama_smoke.md" if a.smoke else "RESULTS_llama.md"
  )
  import tempfile

  with tempfile.TemporaryDirectory() as tmp:
    decode_rows = decode_section(spec, contexts, batch, new, tmp)
  train_rows = train_section(spec, 2 if a.smoke else 8, 16 if a.smoke else 256)
  print("\n".join(train_rows))
  lines = [
    "# Decoder-only (Llama-shaped) benchmarks",
    "",
    f"Command: `python benchmarks/llama.py{' --smoke' if a.smoke else ''}`  ",
    f"Device: {jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} "
    f"cores); JAX {jax.__version__}  ",
    f"Date: {datetime.date.today()}  ",
    f"Model: {spec}",
    "",
    f"## 1. KV cache and cached greedy decoding ({new} new tokens, float32)",
    "",
    *decode_rows,
    "",
    "## 2. Train step vs HF PyTorch (causal LM loss on every token + backward + clipping + "
    "AdamW, same weights and sequences)",
    "",
    *train_rows,
    "",
  ]
  with open(out, "w") as f:
    f.write("\n".join(lines))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
