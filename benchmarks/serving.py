"""What grouping buys when a real engine serves the model: llama.cpp on this CPU decoding one
tiny-but-long-context Llama shape as MHA, GQA-8, GQA-4 and a per-layer budget with GQA-4's
total, exported by `python -m wgqa_jax.convert --export=gguf`'s path (f16 weights). Decode
tokens/s after a prompt that fills 2k or 8k of context, and the KV cache llama.cpp reports,
side by side: the variants take turns, rep after rep, and each figure is the median.

    python benchmarks/serving.py                       # ~10 min on 2 cores
    python benchmarks/serving.py --contexts=512 --reps=1 --new_tokens=8 --out=/tmp/s.md  # smoke

The weights are random (speed and memory do not depend on their values); the per-layer budget
is a fixed allocation (8, 4, 2, 2 KV heads: 16 in all, as GQA-4's 4 x 4), served in the DeciLM
form. Each variant runs with llama.cpp's flash attention on and off: without it the V cache of
every layer is padded to the largest layer's (wgqa_jax.decoding.llama_cpp).
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from wgqa_jax.core import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 16 heads of 32 dims, so that GQA-8 and GQA-4 are both real groupings; an FFN width the DeciLM
# form holds (a multiple of 256); positions for the longest context
SHAPE = dict(
  vocab_size=512,
  hidden_size=512,
  intermediate_size=1536,
  num_layers=4,
  num_heads=16,
  head_dim=32,
  max_position_embeddings=16384,
)
PER_LAYER = (8, 4, 2, 2)  # KV heads per layer: GQA-4's total (4 layers x 4)


def variants_of(cfg, params):
  """{name: (params, cfg)} of the served variants, from one random MHA model."""
  from wgqa_jax.grouping import variants

  heads = {(f"layers_{i}", "attention"): g for i, g in enumerate(PER_LAYER)}
  return {
    "MHA (16 KV heads)": (params, cfg),
    "GQA-8": variants.from_mha(params, cfg, "gqa", 8),
    "GQA-4": variants.from_mha(params, cfg, "gqa", 4),
    f"per-layer {','.join(map(str, PER_LAYER))}": variants.from_mha(
      params, cfg, "gqa", 4, module_kv_heads=heads
    ),
  }


def export_all(work: str) -> dict[str, str]:
  """Each variant's GGUF (f16), made through llama.cpp's converter; {name: path}."""
  import jax

  from wgqa_jax import models
  from wgqa_jax.data import tasks, tokenizers
  from wgqa_jax.store import gguf

  texts = [doc for doc, _ in tasks.source("synthetic_summarize", "train", 300)]
  tok = tokenizers.SentencePieceTokenizer.train_or_load(
    os.path.join(work, "spm.model"), texts, SHAPE["vocab_size"]
  )
  cfg = models.preset("llama-tiny").replace(**SHAPE)
  cfg = models.family_of(cfg).for_tokenizer(cfg, tok)
  params = jax.device_get(models.family_of(cfg).init_params(cfg, jax.random.PRNGKey(0)))
  paths = {}
  for i, (name, (p, c)) in enumerate(variants_of(cfg, params).items()):
    paths[name] = gguf.export(p, c, os.path.join(work, f"v{i}.gguf"), tok, outtype="f16")
    print(f"exported {name}", flush=True)
  return paths


def decode_rate(path, prompt, new_tokens: int, threads: int, flash_attn: bool):
  """(decode tokens/s after `prompt`, the KV MiB llama.cpp reports) of one fresh engine: only
  one is loaded at a time (several in one process slowed each other's decoding 5x here)."""
  import numpy as np

  from wgqa_jax.decoding.llama_cpp import Engine

  e = Engine(path, n_ctx=len(prompt) + new_tokens, n_threads=threads, flash_attn=flash_attn,
             logits_all=False)  # fmt: skip
  try:
    e.llm.eval(prompt)
    token = int(np.argmax(e.last_logits()))
    start = time.perf_counter()
    for _ in range(new_tokens):
      e.llm.eval([token])
      token = int(np.argmax(e.last_logits()))
    return new_tokens / (time.perf_counter() - start), e.kv_cache_mib["K"] + e.kv_cache_mib["V"]
  finally:
    e.close()


def measure(paths: dict[str, str], context: int, new_tokens: int, reps: int, threads: int):
  """{(name, flash attention): (median decode tokens/s, KV MiB)}: every variant with flash
  attention on and off takes its turn in each of `reps` rounds."""
  import numpy as np

  rng = np.random.default_rng(0)
  prompt = [int(i) for i in rng.integers(3, SHAPE["vocab_size"], context - new_tokens)]
  runs = {(name, fa): [] for fa in (True, False) for name in paths}
  for _ in range(reps):
    for name, fa in runs:
      runs[name, fa].append(decode_rate(paths[name], prompt, new_tokens, threads, fa))
  return {key: (statistics.median(r for r, _ in got), got[0][1]) for key, got in runs.items()}


FLAGS = cli.flag_set()
flags.DEFINE_list("contexts", ["2048", "8192"], "context lengths", flag_values=FLAGS)
flags.DEFINE_integer("new_tokens", 64, "decoded tokens per measurement", flag_values=FLAGS)
flags.DEFINE_integer("reps", 3, "measurements per row and context (median)", flag_values=FLAGS)
flags.DEFINE_integer("threads", os.cpu_count() or 1, "llama.cpp's threads", flag_values=FLAGS)
flags.DEFINE_string(
  "out", os.path.join(REPO, "benchmarks", "RESULTS_serving.md"), "results file", flag_values=FLAGS
)


def main(argv: list[str] | None = None) -> int:
  from wgqa_jax.store import gguf

  cli.parse(FLAGS, argv, "benchmarks/serving.py")
  contexts = [int(c) for c in FLAGS.contexts]
  work = tempfile.mkdtemp(prefix="wgqa_serving_")
  try:
    paths = export_all(work)
    results = {c: measure(paths, c, FLAGS.new_tokens, FLAGS.reps, FLAGS.threads) for c in contexts}
  finally:
    shutil.rmtree(work, ignore_errors=True)
  keys = list(next(iter(results.values())))
  head = " | ".join(f"{c} ctx: tokens/s | KV MiB" for c in contexts)
  rows = []
  for name, fa in keys:
    cells = []
    for c in contexts:
      rate, mib = results[c][name, fa]
      base_rate, base_mib = results[c][keys[0][0], fa]  # MHA with the same attention
      cells.append(f"{rate:.1f} ({rate / base_rate:.2f}x) | {mib:.1f} ({mib / base_mib:.2f}x)")
    rows.append(f"| {name} | {'on' if fa else 'off'} | {' | '.join(cells)} |")
  commit = subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
  ).stdout.strip()
  cpu = next(
    (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
    platform.processor(),
  ) if os.path.exists("/proc/cpuinfo") else platform.processor()  # fmt: skip
  command = "python benchmarks/serving.py" + "".join(f" {a}" for a in sys.argv[1:])
  lines = [
    "# Served by llama.cpp: decode speed and KV cache by grouping",
    "",
    f"{datetime.date.today()}, commit {commit}, {cpu}, {FLAGS.threads} threads, "
    f"llama-cpp-python {gguf.runtime_version()}. A random Llama of "
    f"{SHAPE['num_layers']} layers, d={SHAPE['hidden_size']}, {SHAPE['num_heads']} heads of "
    f"{SHAPE['head_dim']}, f16 GGUF and f16 KV cache; decode {FLAGS.new_tokens} tokens after "
    f"a prompt filling the context, one engine loaded at a time, median of {FLAGS.reps} "
    "rounds in which every row takes its turn. Ratios are against MHA with the same attention. "
    "Without flash attention llama.cpp pads every layer's V cache to the largest layer's.",
    "",
    f"| variant | flash attention | {head} |",
    "|---" * (2 + 2 * len(contexts)) + "|",
    *rows,
    "",
    f"Command: `{command}`",
    "",
  ]
  with open(FLAGS.out, "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
