"""Side-by-side benchmarks in one run; prints tables and writes benchmarks/RESULTS.md.

    python benchmarks/run.py                      # CPU-sized defaults (~10 min on 2 cores)
    python benchmarks/run.py --preset=gpu         # full grid on an accelerator

1. train step: our jitted step vs HF PyTorch T5 (same t5-small architecture, batch, AdamW).
2. cached decoding: tokens/s and KV-cache bytes, MHA vs GQA-4 vs GQA-2 vs MQA, over source
   lengths and batch sizes (cache bytes are exact; GQA's must be G/H of MHA's).
3. our cached greedy decoding vs HF PyTorch generate() on the same converted weights.
Random weights throughout (speed does not depend on them). Timings never live in tests/.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wgqa_jax import convert, decode, model, train  # noqa: E402
from wgqa_jax.config import preset  # noqa: E402

PRESETS = {
    "cpu": dict(train_batch=8, train_src=256, train_tgt=64, train_steps=5,
                src_lens=[512, 2048], batches=[1, 8], decode_tokens=32,
                hf_batch=4, hf_src=512, hf_tokens=32, dtype="float32"),
    "gpu": dict(train_batch=32, train_src=512, train_tgt=256, train_steps=20,
                src_lens=[512, 1024, 2048, 4096], batches=[1, 8, 32, 64], decode_tokens=128,
                hf_batch=16, hf_src=512, hf_tokens=128, dtype="bfloat16"),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


def timeit(fn, repeats: int) -> float:
  fn()  # compile / warm up
  t = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - t) / repeats


def sync(x):
  return jax.block_until_ready(x)


def t5_small(**kw):
  return preset("t5-small", dropout_rate=0.0, **kw)


def train_flops(cfg, b, s, t) -> float:
  """~6 * (matmul params touched per token) * tokens + attention score/value matmuls."""
  d, h, dk, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
  attn = 4 * d * h * dk
  enc = cfg.num_encoder_layers * (attn + 2 * d * ff) * s
  dec = cfg.num_decoder_layers * (2 * attn + 2 * d * ff) * t + d * cfg.vocab_size * t
  scores = 2 * h * dk * (cfg.num_encoder_layers * s * s
                         + cfg.num_decoder_layers * (t * t + t * s))
  return 6.0 * b * (enc + dec) + 3.0 * 2 * b * scores


# ------------------------------------------------------------------------------ 1. train ----
def bench_train(p, log):
  import torch
  from transformers import T5Config as HFConfig, T5ForConditionalGeneration
  cfg = t5_small(dtype=p["dtype"])
  b, s, t = p["train_batch"], p["train_src"], p["train_tgt"]
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, cfg.vocab_size, (b, s)).astype(np.int32)
  targets = rng.integers(2, cfg.vocab_size, (b, t)).astype(np.int32)

  params = model.init_params(cfg, jax.random.PRNGKey(0))
  tx = optax.adamw(1e-3)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  from wgqa_jax.train_config import base_config
  c = base_config()
  step = jax.jit(train.make_train_step(cfg, c, tx), donate_argnums=(0,))
  batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets)}
  key = jax.random.PRNGKey(0)
  holder = {"state": state}

  def ours():
    holder["state"], out = step(holder["state"], batch, key)
    sync(out["loss"])
  t_ours = timeit(ours, p["train_steps"])

  torch.manual_seed(0)
  hf = T5ForConditionalGeneration(HFConfig(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
      num_layers=cfg.num_encoder_layers, num_heads=cfg.num_heads, dropout_rate=0.0,
      decoder_start_token_id=0))
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  hf = hf.to(dev).train()
  opt = torch.optim.AdamW(hf.parameters(), lr=1e-3)
  ti, tt = torch.tensor(inputs, dtype=torch.long, device=dev), torch.tensor(
      targets, dtype=torch.long, device=dev)
  amp = p["dtype"] == "bfloat16"

  def theirs():
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
      loss = hf(input_ids=ti, labels=tt).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if dev == "cuda":
      torch.cuda.synchronize()
  t_hf = timeit(theirs, p["train_steps"])

  tokens = b * (s + t)
  rows = [("ours (jax.jit)", t_ours), ("HF PyTorch T5", t_hf)]
  log(f"\n### 1. Train step, t5-small architecture, batch {b}, inputs {s}, targets {t}, "
      f"{p['dtype']}\n")
  peak = peak_tflops()
  log("| implementation | s/step | tokens/s | speed-up vs HF |" + (" MFU |" if peak else ""))
  log("|---|---|---|---|" + ("---|" if peak else ""))
  for name, sec in rows:
    mfu = f" {100 * train_flops(cfg, b, s, t) / sec / (peak * 1e12):.1f}% |" if peak else ""
    log(f"| {name} | {sec:.3f} | {tokens / sec:,.0f} | {t_hf / sec:.2f}x |{mfu}")


def peak_tflops():
  kind = jax.devices()[0].device_kind
  for k, v in PEAK_TFLOPS.items():
    if k in kind:
      return v
  return None


# ----------------------------------------------------------------------------- 2. decode ----
@functools.partial(jax.jit, static_argnames=("cfg", "n_tok"))
def decode_only(params, encoded, mask, cfg, n_tok: int):
  """What decoding costs once the encoder has run: cross K/V projection into the cache, then
  n_tok cached greedy steps (no early stop, so every variant does the same work)."""
  m = model.T5(cfg)
  cache = m.apply({"params": params}, encoded, n_tok, method=model.T5.init_cache)

  def step(i, carry):
    tok, cache = carry
    logits, cache = m.apply({"params": params}, tok[:, None], i, cache, mask,
                            method=model.T5.decode_step)
    return jnp.argmax(logits, -1).astype(jnp.int32), cache

  tok = jnp.zeros((encoded.shape[0],), jnp.int32)
  return jax.lax.fori_loop(0, n_tok, step, (tok, cache))[0]


def bench_decode(p, log):
  base = t5_small(dtype=p["dtype"])
  mha_params = jax.tree.map(np.asarray, model.init_params(base, jax.random.PRNGKey(0)))
  variants = [("MHA", base.num_heads), ("GQA-4", 4), ("GQA-2", 2), ("MQA", 1)]
  n_tok = p["decode_tokens"]
  log(f"\n### 2. Cached greedy decoding, t5-small architecture, {n_tok} new tokens, "
      f"{p['dtype']}\n")
  log("Decode time only (the encoder's output is given; the cross K/V projection is included); "
      "median of 3.\n")
  log("| source len | batch | variant | KV cache | cache / MHA | decode tokens/s | speed-up vs MHA |")
  log("|---|---|---|---|---|---|---|")
  models = {}
  for name, g in variants:
    if g == base.num_heads:
      models[name] = (jax.tree.map(jnp.asarray, mha_params), base)
    else:
      pr, c = convert.group(mha_params, base, "gqa", g)
      models[name] = (jax.tree.map(jnp.asarray, pr), c)
  rng = np.random.default_rng(0)
  for s in p["src_lens"]:
    for b in p["batches"]:
      encoded = jnp.asarray(rng.standard_normal((b, s, base.d_model)), jnp.dtype(base.dtype))
      mask = jnp.ones((b, s), jnp.int32)
      mha_rate = mha_bytes = None
      for name, _ in variants:
        params, cfg = models[name]
        run = lambda: sync(decode_only(params, encoded, mask, cfg, n_tok))
        run()
        times = []
        for _ in range(3):
          t = time.perf_counter()
          run()
          times.append(time.perf_counter() - t)
        rate = b * n_tok / float(np.median(times))
        nbytes = decode.cache_bytes(cfg, b, s, n_tok)
        if name == "MHA":
          mha_rate, mha_bytes = rate, nbytes
        log(f"| {s} | {b} | {name} | {nbytes / 2**20:.1f} MiB | {nbytes / mha_bytes:.3f} | "
            f"{rate:,.0f} | {rate / mha_rate:.2f}x |")


# ------------------------------------------------------------------------- 3. vs HF generate ----
def bench_generate(p, log):
  import torch
  from transformers import T5Config as HFConfig, T5ForConditionalGeneration
  torch.manual_seed(0)
  cfg = t5_small()
  hf = T5ForConditionalGeneration(HFConfig(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
      num_layers=cfg.num_encoder_layers, num_heads=cfg.num_heads, dropout_rate=0.0,
      decoder_start_token_id=0)).eval()
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  cfg = convert.config_from_hf(hf.config.to_dict(), sd)
  params = jax.tree.map(jnp.asarray, convert.hf_to_params(sd, cfg))
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  hf = hf.to(dev)
  b, s, n = p["hf_batch"], p["hf_src"], p["hf_tokens"]
  ids = np.random.default_rng(1).integers(2, cfg.vocab_size, (b, s))
  timed = cfg.replace(eos_token_id=-1)
  t_ours = timeit(lambda: sync(decode.greedy(params, jnp.asarray(ids, jnp.int32), timed, n)), 3)
  ti = torch.tensor(ids, device=dev)

  def theirs():
    with torch.no_grad():
      hf.generate(input_ids=ti, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                  num_beams=1, decoder_start_token_id=0)
    if dev == "cuda":
      torch.cuda.synchronize()
  t_hf = timeit(theirs, 3)
  same = decode.strip(decode.greedy(params, jnp.asarray(ids[:2], jnp.int32), cfg, 16)) == \
      decode.strip(hf.generate(input_ids=ti[:2], max_new_tokens=16, do_sample=False,
                               decoder_start_token_id=0).cpu().numpy()[:, 1:])
  log(f"\n### 3. Greedy generation vs HF generate(), t5-small (MHA), batch {b}, source {s}, "
      f"{n} tokens, float32\n")
  log("| implementation | seconds | tokens/s | speed-up vs HF |")
  log("|---|---|---|---|")
  for name, sec in (("ours (cached, jitted)", t_ours), ("HF generate()", t_hf)):
    log(f"| {name} | {sec:.3f} | {b * n / sec:,.1f} | {t_hf / sec:.2f}x |")
  log(f"\nSame greedy tokens as HF on 2 sequences x 16 tokens: {same}")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="gpu" if jax.default_backend() == "gpu" else "cpu",
                  choices=sorted(PRESETS))
  ap.add_argument("--only", default="train,decode,generate")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
  args = ap.parse_args()
  p = PRESETS[args.preset]
  lines: list[str] = []

  def log(line=""):
    print(line, flush=True)
    lines.append(line)

  dev = jax.devices()[0]
  log("# Benchmarks\n")
  log(f"Command: `python benchmarks/run.py --preset={args.preset}"
      + (f" --only={args.only}`" if args.only != "train,decode,generate" else "`"))
  log(f"Date: {datetime.date.today().isoformat()} | device: {dev.device_kind} "
      f"({jax.default_backend()}, {jax.device_count()} device(s)) | host: {platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} cores | jax {jax.__version__}")
  for part in args.only.split(","):
    {"train": bench_train, "decode": bench_decode, "generate": bench_generate}[part](p, log)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
