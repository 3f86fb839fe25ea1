"""Generation speed of two checkouts, alternated (A B A B ...), in one table: T5 (t5-small shape)
and a small Llama, greedy / 4 beams / sampling, random weights, every token decoded (no EOS).

    python benchmarks/generate_ab.py --a=/path/to/old/checkout --b=. --rounds=3

Each round runs each checkout's timing in its own process (`--time`), which imports wgqa_jax
from that checkout, compiles, then takes the median of 3 timed calls per search.
Writes benchmarks/RESULTS_generate_ab.md (command, device, date).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_string("a", None, "checkout A (e.g. the commit before a change)")
flags.DEFINE_string("b", ".", "checkout B")
flags.DEFINE_integer("rounds", 3, "A B rounds")
flags.DEFINE_enum("only", None, ["t5", "llama"], "one family (default: both)")
flags.DEFINE_string("time", None, "internal: time the checkout on sys.path, print JSON")
flags.DEFINE_string(
  "out", os.path.join(os.path.dirname(__file__), "RESULTS_generate_ab.md"), "results file"
)
FLAGS = flags.FLAGS

T5 = dict(
  vocab_size=32128,
  d_model=512,
  d_kv=64,
  d_ff=2048,
  num_heads=8,
  num_encoder_layers=6,
  num_decoder_layers=6,
  feed_forward_proj="relu",
  dropout_rate=0.0,
)
LLAMA = dict(
  vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=6, num_heads=8, head_dim=64
)
BATCH, SOURCE, NEW = 4, 256, 32
SEARCHES = {
  "greedy": dict(),
  "4 beams": dict(num_beams=4, early_stopping=True),
  "sampling": dict(do_sample=True, top_k=50, top_p=0.9),
}


def generate_fn():
  """(generate(params, cfg, ids, mask, gen), GenerationConfig, t5 module, llama module) of the
  checkout on sys.path, whichever API it has."""
  import wgqa_jax
  from wgqa_jax.models import llama, t5

  # by the checkout's files: an installed (editable) wgqa_jax could lend a missing submodule
  if os.path.isdir(os.path.join(os.path.dirname(wgqa_jax.__file__), "decoding")):
    from wgqa_jax import decoding

    return (
      lambda p, c, ids, mask, gen: decoding.generate(
        p, c, ids, gen, attention_mask=None if isinstance(c, t5.T5Config) else mask
      ),
      decoding.GenerationConfig,
      t5,
      llama,
    )
  from wgqa_jax import decode, decode_causal  # before the decoding package (#23)
  from wgqa_jax.generation import GenerationConfig

  def generate(p, c, ids, mask, gen):
    if isinstance(c, t5.T5Config):
      return decode.generate(p, ids, c, gen)
    return decode_causal.generate(p, ids, mask, c, gen)

  return generate, GenerationConfig, t5, llama


def time_checkout() -> dict:
  import jax
  import numpy as np

  generate, GenerationConfig, t5, llama = generate_fn()
  from wgqa_jax.models.llama.config import LlamaConfig

  out = {}
  rng = np.random.default_rng(0)
  models = {
    "t5": ("t5-small", t5.T5Config(**T5, eos_token_id=-1)),
    "llama": ("llama 6x512", LlamaConfig(**LLAMA, eos_token_id=-1)),
  }
  for name, (family, cfg) in models.items():
    if FLAGS.only not in (None, name):
      continue
    module = t5 if family.startswith("t5") else llama
    params = jax.device_get(module.init_params(cfg, jax.random.PRNGKey(0)))
    ids = rng.integers(2, 1000, (BATCH, SOURCE)).astype(np.int32)
    mask = np.ones_like(ids)
    for search, kw in SEARCHES.items():
      gen = GenerationConfig(max_new_tokens=NEW, **kw)
      run = lambda: np.asarray(generate(params, cfg, ids, mask, gen))
      run()  # compile
      times = []
      for _ in range(3):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
      out[f"{family} | {search}"] = float(np.median(times))
  return out


def main(_):
  if FLAGS.time:
    sys.path.insert(0, os.path.abspath(FLAGS.time))
    print(json.dumps(time_checkout()))
    return
  if not FLAGS.a:
    raise app.UsageError("pass --a=CHECKOUT (and --b, default: this one)")
  runs = {"A": [], "B": []}
  for r in range(FLAGS.rounds):
    for side, path in (("A", FLAGS.a), ("B", FLAGS.b)):
      env = {**os.environ, "PYTHONPATH": os.path.abspath(path)}
      only = [f"--only={FLAGS.only}"] if FLAGS.only else []
      res = subprocess.run(
        [sys.executable, __file__, f"--time={path}", *only], env=env, capture_output=True, text=True
      )
      if res.returncode:
        raise RuntimeError(f"timing {path} failed:\n{res.stderr[-3000:]}")
      runs[side].append(json.loads(res.stdout.strip().splitlines()[-1]))
      print(
        f"round {r + 1} {side}: " + ", ".join(f"{k} {v:.3f}s" for k, v in runs[side][-1].items()),
        flush=True,
      )
  import numpy as np

  lines = [
    f"# Generation speed, checkout A vs B ({datetime.date.today()})",
    "",
    f"`python benchmarks/generate_ab.py --a={FLAGS.a} --b={FLAGS.b} "
    f"--rounds={FLAGS.rounds}{f' --only={FLAGS.only}' if FLAGS.only else ''}` on "
    f"{platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} cores, CPU, float32. Batch {BATCH}, prompt / source {SOURCE}, "
    f"{NEW} new tokens; median of {FLAGS.rounds} alternated rounds (each the median of "
    f"3 calls).",
    "",
    "| model | search | A s | B s | B / A |",
    "|---|---|---|---|---|",
  ]
  for key in runs["A"][0]:
    a = float(np.median([x[key] for x in runs["A"]]))
    b = float(np.median([x[key] for x in runs["B"]]))
    lines.append(f"| {key} | {a:.3f} | {b:.3f} | {b / a:.3f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  with open(FLAGS.out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  app.run(main)
