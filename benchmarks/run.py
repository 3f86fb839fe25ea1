"""Side-by-side benchmarks in one run; prints tables and writes benchmarks/RESULTS.md.

    python benchmarks/run.py                  # CPU defaults (~12 min on 2 cores) -> RESULTS.md
    python benchmarks/run.py --preset=gpu     # full grid on an accelerator -> RESULTS_t5_gpu.md
    python benchmarks/run.py --preset=smoke   # seconds, tiny model: checks the script still runs

1. training: our jitted loss, loss+gradients and full step (AdamW) vs HF PyTorch T5 (same
   t5-small architecture and batch); on CPU also the dense-layer matmul layouts, XLA vs torch.
2. cached decoding: tokens/s and KV-cache bytes, MHA vs GQA-4 vs GQA-2 vs MQA, over source
   lengths and batch sizes (cache bytes are exact; GQA's must be G/H of MHA's).
3. our cached greedy decoding vs HF PyTorch generate() on the same converted weights.
Random weights throughout (speed does not depend on them). Timings never live in tests/.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from wgqa_jax import decoding
from wgqa_jax.core import cli
from wgqa_jax.decoding import GenerationConfig
from wgqa_jax.grouping import variants
from wgqa_jax.models import t5
from wgqa_jax.models.t5.config import preset
from wgqa_jax.store import hf as hf_io
from wgqa_jax.training import objectives, steps as train_step

PRESETS = {
  # a seconds-long run of every section on the tiny architecture: tests/ runs it (no timings)
  "smoke": dict(
    arch="tiny",
    train_batch=2,
    train_src=16,
    train_tgt=8,
    train_steps=1,
    src_lens=[16],
    batches=[1],
    decode_tokens=4,
    hf_batch=2,
    hf_src=16,
    hf_tokens=4,
    dtype="float32",
  ),
  "cpu": dict(
    arch="t5-small",
    train_batch=8,
    train_src=256,
    train_tgt=64,
    train_steps=5,
    src_lens=[512, 2048],
    batches=[1, 8],
    decode_tokens=32,
    hf_batch=4,
    hf_src=512,
    hf_tokens=32,
    dtype="float32",
  ),
  "gpu": dict(
    arch="t5-small",
    train_batch=32,
    train_src=512,
    train_tgt=256,
    train_steps=20,
    src_lens=[512, 1024, 2048, 4096],
    batches=[1, 8, 32, 64],
    decode_tokens=128,
    hf_batch=16,
    hf_src=512,
    hf_tokens=128,
    dtype="bfloat16",
  ),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


def timeit(fn, repeats: int) -> float:
  """Median seconds per call after one warm-up call (medians shrug off a noisy shared host)."""
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def timeit_interleaved(fns: dict, repeats: int) -> dict:
  """Median seconds per call of each fn, calling them in turn (after one warm-up call each)."""
  times = {k: [] for k in fns}
  for fn in fns.values():
    fn()
  for _ in range(repeats):
    for k, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
  return {k: float(np.median(v)) for k, v in times.items()}


def torch_device(log):
  """Where HF PyTorch runs: beside our accelerator, or None when the comparison would be unfair."""
  import torch

  if torch.cuda.is_available():
    return "cuda"
  if jax.default_backend() == "cpu":
    return "cpu"
  log(
    f"\n(HF PyTorch rows skipped: JAX runs on {jax.default_backend()} but this torch "
    f"({torch.__version__}) has no CUDA; install a CUDA build of torch to compare.)"
  )
  return None


def sync(x):
  return jax.block_until_ready(x)


def human_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB"):
    if n < 1024:
      return f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} GiB"


def arch(p, **kw):
  return preset(p["arch"], dropout_rate=0.0, **kw)


def hf_model(cfg, dev):
  """A randomly initialised HF PyTorch T5 with our architecture."""
  import torch
  from transformers import T5Config as HFConfig, T5ForConditionalGeneration

  torch.manual_seed(0)
  return T5ForConditionalGeneration(HFConfig(**cfg.to_hf())).to(dev)


def train_flops(cfg, b, s, t) -> float:
  """~6 * (matmul params touched per token) * tokens + attention score/value matmuls."""
  d, h, dk, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
  attn = 4 * d * h * dk
  enc = cfg.num_encoder_layers * (attn + 2 * d * ff) * s
  dec = cfg.num_decoder_layers * (2 * attn + 2 * d * ff) * t + d * cfg.vocab_size * t
  scores = 2 * h * dk * (cfg.num_encoder_layers * s * s + cfg.num_decoder_layers * (t * t + t * s))
  return 6.0 * b * (enc + dec) + 3.0 * 2 * b * scores


# ------------------------------------------------------------------------------ 1. train ----
def bench_train(p, log):
  import torch

  from wgqa_jax.training.config import base_config

  cfg = arch(p, dtype=p["dtype"])
  b, s, t = p["train_batch"], p["train_src"], p["train_tgt"]
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, cfg.vocab_size, (b, s)).astype(np.int32)
  targets = rng.integers(2, cfg.vocab_size, (b, t)).astype(np.int32)
  n = p["train_steps"]

  # ours: the loss alone, loss + gradients, and the whole jitted train step (AdamW, donated state)
  c = base_config()
  params = t5.init_params(cfg, jax.random.PRNGKey(0))
  tx = optax.adamw(1e-3)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets)}
  key = jax.random.PRNGKey(0)
  loss = lambda prm, bt: objectives.loss_sums(prm, bt, key, cfg, 0.0, 0.0, True)[0]
  fwd, grad = jax.jit(loss), jax.jit(jax.grad(loss))
  step = jax.jit(train_step.make_train_step(cfg, c.optim, tx), donate_argnums=(0,))
  holder = {"state": state}

  def ours_step():
    holder["state"], out = step(holder["state"], batch, key)
    sync(out["loss"])

  ours = {"forward (loss)": timeit(lambda: sync(fwd(params, batch)), n)}
  if jax.default_backend() == "cpu":  # what wgqa_jax.models.ops' transposed weight gradient buys
    plain_cfg = cfg.replace(transpose_weight_grad_on_cpu=False)
    plain = jax.jit(
      jax.grad(lambda prm, bt: objectives.loss_sums(prm, bt, key, plain_cfg, 0.0, 0.0, True)[0])
    )
    ours.update(
      timeit_interleaved(
        {  # alternated, so a noisy host cannot favour either
          "forward + backward": lambda: sync(grad(params, batch)),
          "forward + backward, plain x^T dy": lambda: sync(plain(params, batch)),
        },
        2 * n,
      )
    )
  else:
    ours["forward + backward"] = timeit(lambda: sync(grad(params, batch)), n)
  ours["train step (+ AdamW)"] = timeit(ours_step, n)  # last: it donates the params
  params = holder = None  # the params and state are freed before HF builds its model

  theirs = {}
  dev = torch_device(log)
  if dev is not None:
    hf = hf_model(cfg, dev).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-3)
    ti, tt = (torch.tensor(x, dtype=torch.long, device=dev) for x in (inputs, targets))
    amp = p["dtype"] == "bfloat16"

    def hf_loss():
      with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
        return hf(input_ids=ti, labels=tt).loss

    def run(what):
      def go():
        if what == "forward (loss)":
          with torch.no_grad():
            hf_loss()
        else:
          hf_loss().backward()
          if what == "train step (+ AdamW)":
            opt.step()
          opt.zero_grad(set_to_none=True)
        if dev == "cuda":
          torch.cuda.synchronize()

      return go

    theirs = {what: timeit(run(what), n) for what in ours if "plain" not in what}

  tokens = b * (s + t)
  peak = peak_tflops()
  log(
    f"\n### 1. Training, {p['arch']} architecture, batch {b}, inputs {s}, targets {t}, "
    f"{p['dtype']}\n"
  )
  log(
    f"Median of {n} calls each ({2 * n}, taken in turn, for the two forward + backward rows "
    f"on CPU). tokens = batch x (inputs + targets).\n"
  )
  log(
    "| what | ours s | ours tokens/s | HF PyTorch s | HF tokens/s | ours vs HF |"
    + (" MFU ours | MFU HF |" if peak else "")
  )
  log("|---|---|---|---|---|---|" + ("---|---|" if peak else ""))
  for what, sec in ours.items():
    hs = theirs.get(what)
    row = f"| {what} | {sec:.3f} | {tokens / sec:,.0f} | " + (
      f"{hs:.3f} | {tokens / hs:,.0f} | {hs / sec:.2f}x |" if hs else "- | - | - |"
    )
    if peak and what != "forward (loss)":
      flops = train_flops(cfg, b, s, t) / (peak * 1e12)
      row += f" {100 * flops / sec:.1f}% | " + (f"{100 * flops / hs:.1f}% |" if hs else "- |")
    elif peak:
      row += " | |"
    log(row)
  if jax.default_backend() == "cpu":
    bench_gemm(cfg, b * s, log)


def bench_gemm(cfg, m, log):
  """The matmul layouts a dense layer needs, XLA:CPU vs torch, at the train step's shapes:
  forward y = x W (NN), input gradient dx = dy W^T (NT), weight gradient dW = x^T dy (TN)."""
  import torch

  rng = np.random.default_rng(0)
  d, f = cfg.d_model, cfg.d_ff
  x, w, dy = (rng.standard_normal(sh).astype(np.float32) for sh in ((m, d), (d, f), (m, f)))
  cases = [
    ("forward  x W", "NN", lambda a, b_: a @ b_, (x, w)),
    ("grad x   dy W^T", "NT", lambda a, b_: a @ b_.T, (dy, w)),
    ("grad W   x^T dy", "TN", lambda a, b_: a.T @ b_, (x, dy)),
  ]
  log(
    f"\nWhere the time goes on CPU: one dense layer's matmuls ({m} tokens, d_model {d}, "
    f"d_ff {f}, float32), median of 10.\n"
  )
  log("| matmul | layout | XLA GFLOP/s | torch GFLOP/s | XLA vs torch |")
  log("|---|---|---|---|---|")
  flops = 2.0 * m * d * f
  for name, lay, fn, args in cases:
    jf, ja = jax.jit(fn), [jnp.asarray(a) for a in args]
    ta = [torch.from_numpy(a) for a in args]
    tj = timeit(lambda: sync(jf(*ja)), 10)
    tt = timeit(lambda: fn(*ta), 10)
    log(f"| {name} | {lay} | {flops / tj / 1e9:.0f} | {flops / tt / 1e9:.0f} | {tt / tj:.2f}x |")


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
  m = t5.T5(cfg)
  cache = m.apply({"params": params}, encoded, n_tok, method=t5.T5.init_cache)

  def step(i, carry):
    tok, cache = carry
    logits, cache = m.apply(
      {"params": params}, tok[:, None], i, cache, mask, method=t5.T5.decode_step
    )
    return jnp.argmax(logits, -1).astype(jnp.int32), cache

  tok = jnp.zeros((encoded.shape[0],), jnp.int32)
  return jax.lax.fori_loop(0, n_tok, step, (tok, cache))[0]


def bench_decode(p, log):
  base = arch(p, dtype=p["dtype"])
  mha_params = jax.tree.map(np.asarray, t5.init_params(base, jax.random.PRNGKey(0)))
  h = base.num_heads
  groups = sorted({h, h // 2, h // 4, 1} - {0}, reverse=True)
  rows = [("MHA" if g == h else "MQA" if g == 1 else f"GQA-{g}", g) for g in groups]
  n_tok = p["decode_tokens"]
  log(
    f"\n### 2. Cached greedy decoding, {p['arch']} architecture, {n_tok} new tokens, {p['dtype']}\n"
  )
  log(
    "Decode time only (the encoder's output is given; the cross K/V projection is included); "
    "median of 3.\n"
  )
  log(
    "| source len | batch | variant | KV cache | cache / MHA | decode tokens/s | speed-up vs MHA |"
  )
  log("|---|---|---|---|---|---|---|")
  models = {}
  for name, g in rows:
    if g == base.num_heads:
      models[name] = (jax.tree.map(jnp.asarray, mha_params), base)
    else:
      pr, c = variants.from_mha(mha_params, base, "gqa", g)
      models[name] = (jax.tree.map(jnp.asarray, pr), c)
  rng = np.random.default_rng(0)
  for s in p["src_lens"]:
    for b in p["batches"]:
      encoded = jnp.asarray(rng.standard_normal((b, s, base.d_model)), jnp.dtype(base.dtype))
      mask = jnp.ones((b, s), jnp.int32)
      mha_rate = mha_bytes = None
      for name, _ in rows:
        params, cfg = models[name]
        run = lambda: sync(decode_only(params, encoded, mask, cfg, n_tok))
        run()
        times = []
        for _ in range(3):
          t = time.perf_counter()
          run()
          times.append(time.perf_counter() - t)
        rate = b * n_tok / float(np.median(times))
        nbytes = decoding.cache_bytes(cfg, b, s, n_tok)
        if name == "MHA":
          mha_rate, mha_bytes = rate, nbytes
        log(
          f"| {s} | {b} | {name} | {human_bytes(nbytes)} | {nbytes / mha_bytes:.3f} | "
          f"{rate:,.0f} | {rate / mha_rate:.2f}x |"
        )


# ------------------------------------------------------------------------- 3. vs HF generate ----
def bench_generate(p, log):
  import torch

  dev = torch_device(log)
  if dev is None:
    return
  hf = hf_model(arch(p), "cpu").eval()
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  cfg = hf_io.config_from_hf(hf.config.to_dict(), sd)
  params = jax.tree.map(jnp.asarray, hf_io.hf_to_params(sd, cfg))
  hf = hf.to(dev)
  b, s, n = p["hf_batch"], p["hf_src"], p["hf_tokens"]
  ids = np.random.default_rng(1).integers(2, cfg.vocab_size, (b, s))
  timed = cfg.replace(eos_token_id=-1)  # never ends: both sides decode every token
  ti = torch.tensor(ids, device=dev)
  log(
    f"\n### 3. Generation vs HF generate(), {p['arch']} (MHA), batch {b}, source {s}, "
    f"{n} new tokens, float32\n"
  )
  log("| search | implementation | seconds | tokens/s | speed-up vs HF | same tokens as HF |")
  log("|---|---|---|---|---|---|")
  for beams in (1, 4):  # greedy, and beam search as t5 summarises (early stopping)
    gen = GenerationConfig(max_new_tokens=n, num_beams=beams, early_stopping=beams > 1)
    hf_kw = dict(
      num_beams=beams, do_sample=False, decoder_start_token_id=0, early_stopping=beams > 1
    )
    t_ours = timeit(
      lambda: sync(decoding.generate(params, timed, jnp.asarray(ids, jnp.int32), gen)), 3
    )

    def theirs():
      with torch.no_grad():
        hf.generate(input_ids=ti, max_new_tokens=n, min_new_tokens=n, **hf_kw)
      if dev == "cuda":
        torch.cuda.synchronize()

    t_hf = timeit(theirs, 3)
    check = GenerationConfig(max_new_tokens=16, num_beams=beams, early_stopping=beams > 1)
    same = decoding.strip(
      decoding.generate(params, cfg, jnp.asarray(ids[:2], jnp.int32), check)
    ) == decoding.strip(
      hf.generate(input_ids=ti[:2], max_new_tokens=16, **hf_kw).cpu().numpy()[:, 1:]
    )
    search = "greedy" if beams == 1 else f"{beams} beams"
    for name, sec in (("ours (cached, jitted)", t_ours), ("HF generate()", t_hf)):
      log(
        f"| {search} | {name} | {sec:.3f} | {b * n / sec:,.1f} | {t_hf / sec:.2f}x | "
        f"{same if name.startswith('ours') else ''} |"
      )
  log("\nSame tokens: 2 sequences x 16 tokens with the model's own EOS.")


FLAGS = cli.flag_set()
flags.DEFINE_enum(
  "preset", None, sorted(PRESETS), "default: gpu on a GPU, else cpu", flag_values=FLAGS
)
flags.DEFINE_string("only", "train,decode,generate", "sections to run", flag_values=FLAGS)
flags.DEFINE_string(
  "out",
  None,
  "default: benchmarks/RESULTS.md (cpu preset), RESULTS_t5_gpu.md (gpu preset; RESULTS_gpu.md "
  "is benchmarks/gpu.py's)",
  flag_values=FLAGS,
)


def main(argv: list[str] | None = None) -> int:
  args = cli.parse(FLAGS, argv, "benchmarks/run.py")
  preset_name = args.preset or ("gpu" if jax.default_backend() == "gpu" else "cpu")
  here = os.path.dirname(os.path.abspath(__file__))
  out = args.out or os.path.join(
    here, "RESULTS.md" if preset_name == "cpu" else f"RESULTS_t5_{preset_name}.md"
  )
  p = PRESETS[preset_name]
  lines: list[str] = []

  def log(line=""):
    print(line, flush=True)
    lines.append(line)

  dev = jax.devices()[0]
  log("# Benchmarks\n")
  log(
    f"Command: `python benchmarks/run.py --preset={preset_name}"
    + (f" --only={args.only}`" if args.only != "train,decode,generate" else "`")
  )
  log(
    f"Date: {datetime.date.today().isoformat()} | device: {dev.device_kind} "
    f"({jax.default_backend()}, {jax.device_count()} device(s)) | host: "
    f"{platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} cores | jax {jax.__version__}"
  )
  for part in args.only.split(","):
    {"train": bench_train, "decode": bench_decode, "generate": bench_generate}[part](p, log)
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"\nwrote {out}")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
