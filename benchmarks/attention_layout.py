"""Grouped-attention contraction layouts, side by side on this device (decides attention.py).

    python benchmarks/attention_layout.py      # -> benchmarks/RESULTS_attention_layout.md

merged R*t rows (ours): q (b, t, H, d) -> (b, G, R*t, d); einsum bgqd,bsgd->bgqs
named, MaxText-style:   q (b, t, G, R, d);            einsum btgrd,bsgd->bgrts
Both compute the same attention (checked here); forward, and forward + backward for training
shapes; one cached decode step. Medians of 15 calls, the two layouts alternated 3 times.
"""

import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def merged(q, k, v, bias):
  b, t, h, d = q.shape
  g, s = k.shape[2], k.shape[1]
  r = h // g
  q = q.reshape(b, t, g, r, d).transpose(0, 2, 3, 1, 4).reshape(b, g, r * t, d)
  logits = jnp.einsum("bgqd,bsgd->bgqs", q, k).reshape(b, g, r, t, s)
  w = jax.nn.softmax(logits + bias.reshape(bias.shape[0], g, r, t, s), -1)
  out = jnp.einsum("bgqs,bsgd->bgqd", w.reshape(b, g, r * t, s), v)
  return out.reshape(b, g, r, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def named(q, k, v, bias):
  b, t, h, d = q.shape
  g, s = k.shape[2], k.shape[1]
  r = h // g
  logits = jnp.einsum("btgrd,bsgd->bgrts", q.reshape(b, t, g, r, d), k)
  w = jax.nn.softmax(logits + bias.reshape(bias.shape[0], g, r, t, s), -1)
  return jnp.einsum("bgrts,bsgd->btgrd", w, v).reshape(b, t, h, d)


def median_ms(f, args, n=15):
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def main():
  rng = np.random.default_rng(0)
  h, d = 8, 64  # t5-small
  lines = [
    "# Grouped-attention layouts",
    "",
    f"`python {' '.join(sys.argv)}` on {jax.devices()[0].device_kind} "
    f"({jax.default_backend()}), jax {jax.__version__}, {datetime.date.today()}.",
    "",
    "| shape | merged R*t fwd (ms) | named fwd (ms) | named/merged fwd | merged fwd+bwd (ms) "
    "| named fwd+bwd (ms) | named/merged fwd+bwd |",
    "|---|---|---|---|---|---|---|",
  ]
  for b, t, s, g, label in [
    (8, 64, 256, 8, "train MHA"),
    (8, 64, 256, 2, "train GQA-2"),
    (8, 1, 1024, 2, "decode GQA-2"),
    (8, 1, 1024, 1, "decode MQA"),
  ]:
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, s, g, d)), jnp.float32) for _ in range(2))
    bias = jnp.asarray(rng.standard_normal((1, h, t, s)), jnp.float32)
    np.testing.assert_allclose(merged(q, k, v, bias), named(q, k, v, bias), rtol=1e-4, atol=1e-4)
    res = {key: [] for key in ("mf", "nf", "mb", "nb")}
    grad = lambda f: jax.jit(jax.grad(lambda q, k, v: f(q, k, v, bias).sum(), argnums=(0, 1, 2)))
    mg, ng = grad(merged), grad(named)
    for _ in range(3):
      res["mf"].append(median_ms(jax.jit(merged), (q, k, v, bias)))
      res["nf"].append(median_ms(jax.jit(named), (q, k, v, bias)))
      if t > 1:
        res["mb"].append(median_ms(mg, (q, k, v)))
        res["nb"].append(median_ms(ng, (q, k, v)))
    m = {key: float(np.median(x)) if x else float("nan") for key, x in res.items()}
    lines.append(
      f"| {label} b={b} t={t} s={s} H={h} G={g} | {m['mf']:.3f} | {m['nf']:.3f} | "
      f"{m['nf'] / m['mf']:.2f}x | {m['mb']:.3f} | {m['nb']:.3f} | "
      f"{m['nb'] / m['mb']:.2f}x |"
    )
    print(lines[-1], flush=True)
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS_attention_layout.md")
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
