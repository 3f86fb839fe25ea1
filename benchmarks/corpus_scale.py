"""Continued pretraining on a C4-shaped local corpus of 2+ GB, generated here: the one-time
conversion (python -m wgqa_jax.prepare_corpus) and start-up to the first train step, with the
memory of the run over its first steps.

    python benchmarks/corpus_scale.py --gb=2.1 --dir=/tmp/c4_shaped
        # -> benchmarks/RESULTS_corpus.md and benchmarks/RESULTS_corpus.json

1. Corpus: `--gb` GB of document text (UTF-8 bytes of the "text" fields; the files are ~6%
   more) as C4's JSON lines records {"text", "timestamp", "url"}, in 16 files
   c4-train.000NN-of-00016.json. Documents of C4 length (log-normal words, median 220, mean
   ~2.2 KB, heavy right tail), English-looking text: real function words and pseudo-words drawn
   from a Zipf law, sentences, commas, paragraphs ("\\n" between them), a few non-ASCII words.
   Generated once, at ~60-80 MB/s on one core (numpy blocks of ~8 MB: vectorised word picks
   from a fixed table of word forms, gathered as bytes); kept and reused while
   `--dir`/generated.json matches --gb, --seed and --words. `--words=cnn_dm` writes the same
   records with wgqa_jax.local_tfds's syllable words instead, the text of the CNN/DailyMail-shaped
   dataset behind the reference figure (its sentencepiece sample trains several times faster).
2. One-time preparation: `python -m wgqa_jax.prepare_corpus` of the first file alone (`first`)
   and of all 16 (`full`); wall time and peak RSS of the process. Kept and reused (their
   recorded figures too) while the inputs are the same.
3. Start-up: `python -m wgqa_jax.train` from process start to the first finished train step,
   peak RSS of the process and its grain worker, and RSS at every logged step (log_every=1)
   for `--steps` steps: tiny T5 span corruption (configs/tiny.py) and tiny Llama causal LM
   (configs/llama_tiny.py, loss on all tokens), sentencepiece trained on the fly, inputs 512 /
   targets 114 (causal: rows of 626), batch 8, 1 grain worker, a fresh workdir each run; the
   same settings as benchmarks/data_pipeline.py section 1 (CNN/DailyMail-shaped pairs) but for
   the objective.

Results: --results (default benchmarks/RESULTS_corpus.md) and the raw numbers beside it (.json).
A check at small scale, results kept out of the repo:
    python benchmarks/corpus_scale.py --gb=0.03 --dir=/tmp/c4_small_check --steps=20 \
        --results=/tmp/c4_small_check/RESULTS_corpus.md
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
from absl import flags
from data_pipeline import tree_rss  # benchmarks/data_pipeline.py, beside this script

from wgqa_jax.core import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the CNN/DailyMail-shaped figure (benchmarks/RESULTS_data.md section 1, 287k articles),
# read from that file when it is there
CNN_DM = {"first_step_s": 13.9, "peak_gb": 1.66, "label": "287k"}

# ----------------------------------------------------------------------------------------------
# 1. The C4-shaped generator
# ----------------------------------------------------------------------------------------------
GENERATOR_VERSION = 1
FILES = 16
MEDIAN_WORDS, SIGMA, MIN_WORDS, MAX_WORDS = 220, 0.95, 25, 40_000
VOCAB = 30_000  # distinct words (function words + pseudo-words + numbers)
P_COMMA, P_SENTENCE, P_PARAGRAPH, P_PROPER = 0.06, 1 / 15, 0.3, 0.02
MIN_SENTENCE = 4  # words
BLOCK_TEXT_BYTES = 8 << 20  # text generated per join

FUNCTION_WORDS = (
  "the of and to a in is that for it on with as was are be this by you at from or have an "
  "they not but we his can all their has more one will your which were been if about would "
  "so there what also other when up new out some time into only our than its may any these "
  "most after first over us like just people who them how he she her make well can use very "
  "back many any where through much before best each while should work because such even "
  "year years way good day get home see find need help know take since still great here own "
  "those both under free same last long right down high every few off information business "
  "service world life part school online made between number family data area said could "
  "then do does did had being going says around without used system team different product "
  "place small large used using within page"
).split()
NON_ASCII = [
  "café",
  "naïve",
  "résumé",
  "über",
  "it’s",
  "don’t",
  "you’re",
  "we’re",
  "Zürich",
  "São",
  "piñata",
  "façade",
  "coöperate",
  "déjà",
  "entrée",
  "–",
]
NUMBERS = [
  "2019",
  "2018",
  "2017",
  "2020",
  "1",
  "2",
  "3",
  "4",
  "5",
  "10",
  "12",
  "15",
  "20",
  "24",
  "30",
  "50",
  "100",
  "$10",
  "$25",
  "$99",
  "5%",
  "10%",
  "1,000",
  "2.5",
  "#1",
  "3D",
]
ONSETS = [
  "",
  "",
  "b",
  "c",
  "d",
  "f",
  "g",
  "h",
  "j",
  "k",
  "l",
  "m",
  "n",
  "p",
  "r",
  "s",
  "t",
  "v",
  "w",
  "y",
  "z",
  "bl",
  "br",
  "ch",
  "cl",
  "cr",
  "dr",
  "fl",
  "fr",
  "gl",
  "gr",
  "pl",
  "pr",
  "sc",
  "sh",
  "sl",
  "sm",
  "sn",
  "sp",
  "st",
  "str",
  "th",
  "tr",
  "wh",
  "qu",
]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ee", "ie", "oo", "ou", "y"]
CODAS = [
  "",
  "",
  "",
  "",
  "n",
  "r",
  "s",
  "t",
  "l",
  "m",
  "nd",
  "nt",
  "st",
  "ng",
  "ck",
  "rt",
  "ll",
  "rd",
  "ss",
]
SUFFIXES = [
  "",
  "",
  "",
  "",
  "",
  "s",
  "s",
  "ed",
  "ing",
  "er",
  "ly",
  "tion",
  "ment",
  "ness",
  "able",
  "al",
  "ity",
  "ers",
  "es",
  "ful",
]
# what follows each word: in the JSON file (escaped) and in the text; the last is a document's end
SEPS_FILE = [" ", ", ", ". ", ".\\n", "."]
SEPS_TEXT = [" ", ", ", ". ", ".\n", "."]
TLDS = ["com", "com", "com", "org", "net", "co.uk", "info", "de", "ca", "com.au", "io"]


class Vocabulary:
  """Every word form (word x capitalised x separator) as UTF-8 bytes in one buffer (offsets,
  lengths, and the length of each form in the document text), and a table of word ids
  distributed as a Zipf (Mandelbrot) law, indexed by uniform integers."""

  def __init__(self, seed: int, kind: str = "english"):
    rng = np.random.default_rng([seed, 7])
    if kind == "cnn_dm":  # wgqa_jax.local_tfds's words (the CNN/DailyMail-shaped dataset's)
      from wgqa_jax.data import local_tfds

      words, extras = [str(w) for w in local_tfds._vocabulary(0)], []
    else:
      words, extras = list(dict.fromkeys(FUNCTION_WORDS)), NON_ASCII + NUMBERS
    seen = set(words)
    # longer pseudo-words further down the ranks, as in English
    while kind == "english" and len(words) < VOCAB - len(extras):
      rank = len(words)
      syllables = (
        1 + int(rng.random() < min(0.7, rank / 3000)) + int(rng.random() < min(0.25, rank / 30000))
      )
      w = "".join(
        ONSETS[rng.integers(len(ONSETS))]
        + VOWELS[rng.integers(len(VOWELS))]
        + CODAS[rng.integers(len(CODAS))]
        for _ in range(syllables)
      )
      if rank > 500 and rng.random() < 0.4:
        w += SUFFIXES[rng.integers(len(SUFFIXES))]
      if len(w) > 1 and w not in seen:
        seen.add(w)
        words.append(w)
    # the numbers and non-ASCII words at scattered ranks (not at the top)
    for w in extras:
      words.insert(int(rng.integers(60, 3000)), w)
    self.words = words
    forms_file, forms_text = [], []
    for w in words:
      for cap in (w, w[:1].upper() + w[1:]):
        forms_file += [(cap + s).encode("utf-8") for s in SEPS_FILE]
        forms_text += [(cap + s).encode("utf-8") for s in SEPS_TEXT]
    self.prefix_id = len(forms_file)  # '{"text":"'; per-document suffixes follow it
    forms_file.append(b'{"text":"')
    forms_text.append(b"")
    self.buffer = np.frombuffer(b"".join(forms_file), np.uint8)
    self.lengths = np.array([len(f) for f in forms_file], np.int64)
    self.offsets = np.cumsum(self.lengths) - self.lengths
    self.text_bytes = np.array([len(f) for f in forms_text], np.int64)
    ranks = np.arange(1, len(words) + 1)
    p = 1.0 / (ranks + 2.7) ** 1.07
    counts = np.maximum(np.round(p / p.sum() * (1 << 22)).astype(np.int64), 1)
    self.sampler = np.repeat(np.arange(len(words), dtype=np.int64), counts)
    # url words: pseudo-words, no function words
    self.url_words = np.array(
      [
        w
        for w in words[len(FUNCTION_WORDS) if kind == "english" else 0 :]
        if w.isascii() and w.isalpha()
      ],
      dtype=object,
    )

  def mean_word_length(self) -> float:
    lengths = np.array([len(w) for w in self.words])
    return float(lengths[self.sampler].mean())


_ARANGE = np.zeros(0, np.int32)


def arange32(n: int) -> np.ndarray:
  """np.arange(n, dtype=int32), from a cached array (fresh big arrays cost page faults)."""
  global _ARANGE
  if len(_ARANGE) < n:
    _ARANGE = np.arange(max(n, 2 * len(_ARANGE)), dtype=np.int32)
  return _ARANGE[:n]


def gather(buffer: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> bytes:
  """buffer[offsets[0]:offsets[0] + lengths[0]] + buffer[offsets[1]:...] + ..., vectorised."""
  ends = np.cumsum(lengths)
  total = int(ends[-1])
  assert total < 2**31 and len(buffer) < 2**31
  index = np.repeat((offsets - (ends - lengths)).astype(np.int32), lengths)
  index += arange32(total)
  return buffer[index].tobytes()


def generate_block(rng: np.random.Generator, vocab: Vocabulary, n_docs: int) -> tuple[bytes, int]:
  """n_docs JSON lines (UTF-8) and the UTF-8 bytes of their texts."""
  counts = np.clip(
    np.rint(rng.lognormal(np.log(MEDIAN_WORDS), SIGMA, n_docs)), MIN_WORDS, MAX_WORDS
  ).astype(np.int64)
  n = int(counts.sum())
  end = np.cumsum(counts)
  start = end - counts
  words = vocab.sampler[rng.integers(0, len(vocab.sampler), n)]
  r1, r2 = rng.random(n, np.float32), rng.random(n, np.float32)
  sep = np.zeros(n, np.int64)
  sep[r1 < P_COMMA] = 1
  sentence = r1 > 1 - P_SENTENCE
  ends = np.flatnonzero(sentence)
  sentence[ends[np.diff(ends, prepend=-MIN_SENTENCE) < MIN_SENTENCE]] = False  # no 1-3 words
  sep[sentence] = 2
  sep[sentence & (r2 < P_PARAGRAPH)] = 3
  sep[end - 1] = 4
  cap = np.empty(n, np.int64)
  cap[0] = 1
  cap[1:] = sep[:-1] >= 2  # after a sentence's end, and a document's first word
  cap |= r2 > 1 - P_PROPER
  ids = (words * 2 + cap) * len(SEPS_FILE) + sep
  text_bytes = int(vocab.text_bytes[ids].sum())

  # C4's other fields: a crawl time in April 2019 and a url made of words
  d = np.arange(n_docs)
  stamps = np.datetime_as_string(
    np.datetime64("2019-04-18T00:00:00")
    + rng.integers(0, 9 * 86400, n_docs).astype("timedelta64[s]")
  )
  uw = vocab.url_words
  pick = lambda: uw[rng.integers(0, len(uw), n_docs)]  # noqa: E731
  tld = np.array(TLDS, dtype=object)[rng.integers(0, len(TLDS), n_docs)]
  www = np.where(rng.random(n_docs) < 0.6, "https://www.", "https://").astype(object)
  url = (
    www
    + pick()
    + pick()
    + "."
    + tld
    + "/"
    + pick()
    + "-"
    + pick()
    + "-"
    + pick()
    + np.where(rng.random(n_docs) < 0.5, "/", ".html").astype(object)
  )
  suffixes = ('","timestamp":"' + stamps.astype(object) + 'Z","url":"' + url + '"}\n').tolist()
  suffix_bytes = [x.encode("utf-8") for x in suffixes]
  suffix_lengths = np.array([len(x) for x in suffix_bytes], np.int64)

  # lay out: prefix, the document's word forms, its suffix; document after document
  out = np.empty(n + 2 * n_docs, np.int64)
  out[arange32(n) + 2 * np.repeat(d, counts) + 1] = ids
  out[start + 2 * d] = vocab.prefix_id
  out[end + 2 * d + 1] = vocab.prefix_id + 1 + d
  buffer = np.concatenate([vocab.buffer, np.frombuffer(b"".join(suffix_bytes), np.uint8)])
  offsets = np.concatenate(
    [vocab.offsets, len(vocab.buffer) + np.cumsum(suffix_lengths) - suffix_lengths]
  )
  lengths = np.concatenate([vocab.lengths, suffix_lengths])
  return gather(buffer, offsets[out], lengths[out]), text_bytes


def corpus_files(directory: str) -> list[str]:
  return [os.path.join(directory, f"c4-train.{i:05d}-of-{FILES:05d}.json") for i in range(FILES)]


def generate(directory: str, gb: float, seed: int, words: str = "english") -> dict:
  """The corpus of `gb` GB of text in `directory`, generated unless already there."""
  record_path = os.path.join(directory, "generated.json")
  files = corpus_files(directory)
  if os.path.exists(record_path):
    with open(record_path) as f:
      record = json.load(f)
    if (record.get("version"), record.get("gb"), record.get("seed"), record.get("words")) == (
      GENERATOR_VERSION,
      gb,
      seed,
      words,
    ) and all(
      os.path.exists(p) and os.path.getsize(p) == r["file_bytes"]
      for p, r in zip(files, record["files"])
    ):
      print(
        f"corpus: {directory} already holds {record['text_bytes'] / 1e9:.2f} GB of text "
        f"({record['documents']} documents); generated {record['date']}",
        flush=True,
      )
      return dict(record, reused=True)
  os.makedirs(directory, exist_ok=True)
  for stale in glob.glob(os.path.join(directory, "c4-train.*")):
    os.remove(stale)
  t0 = time.time()
  vocab = Vocabulary(seed, words)
  target = gb * 1e9
  per_file = target / FILES
  done, last_print, rows = 0, 0.0, []
  mean_doc = 2200  # bytes of text, roughly: sizes the last block of a file
  for i, path in enumerate(files):
    rng = np.random.default_rng([seed, i])
    written = docs = file_bytes = 0
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      while written < per_file:
        n_docs = int(min(BLOCK_TEXT_BYTES // mean_doc, (per_file - written) // mean_doc + 1))
        data, text_bytes = generate_block(rng, vocab, max(n_docs, 1))
        f.write(data)
        written += text_bytes
        file_bytes += len(data)
        docs += max(n_docs, 1)
        now = time.time()
        if now - last_print > 0.5:
          last_print = now
          rate = (done + written) / 1e6 / (now - t0)
          print(
            f"\rgenerating {directory}: {(done + written) / 1e9:.2f} / {gb:.2f} GB of text, "
            f"file {i + 1}/{FILES}, {rate:.0f} MB/s   ",
            end="",
            file=sys.stderr,
            flush=True,
          )
    os.rename(tmp, path)
    done += written
    rows.append(
      {
        "name": os.path.basename(path),
        "documents": docs,
        "text_bytes": written,
        "file_bytes": file_bytes,
      }
    )
  seconds = time.time() - t0
  print(
    f"\rgenerated {directory}: {done / 1e9:.2f} GB of text in {seconds:.0f} s "
    f"({done / 1e6 / seconds:.0f} MB/s)" + " " * 20,
    file=sys.stderr,
    flush=True,
  )
  record = {
    "version": GENERATOR_VERSION,
    "gb": gb,
    "seed": seed,
    "words": words,
    "vocabulary": len(vocab.words),
    "mean_word_length": vocab.mean_word_length(),
    "files": rows,
    "documents": sum(r["documents"] for r in rows),
    "text_bytes": done,
    "file_bytes": sum(r["file_bytes"] for r in rows),
    "seconds": seconds,
    "text_mb_s": done / 1e6 / seconds,
    "date": str(datetime.date.today()),
    "id": datetime.datetime.now().isoformat(),
    "shape": {
      "median_words": MEDIAN_WORDS,
      "sigma": SIGMA,
      "min_words": MIN_WORDS,
      "max_words": MAX_WORDS,
    },
  }
  with open(record_path, "w") as f:
    json.dump(record, f, indent=1)
  return dict(record, reused=False)


def document_lengths(path: str, limit: int = 20_000) -> dict:
  """Text length statistics (bytes) of the first `limit` documents of a generated file."""
  sizes = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      sizes.append(len(json.loads(line)["text"].encode("utf-8")))
      if len(sizes) >= limit:
        break
  s = np.asarray(sizes)
  return {
    "documents_read": len(s),
    "mean": float(s.mean()),
    "median": float(np.median(s)),
    "p99": float(np.percentile(s, 99)),
    "max": int(s.max()),
  }


# ----------------------------------------------------------------------------------------------
# 2. One-time preparation
# ----------------------------------------------------------------------------------------------
def run_measured(cmd: list[str], log_path: str) -> dict:
  """Run `cmd` to the end: wall seconds, peak RSS of its process tree (sampled every 50 ms, and
  the kernel's own maximum for the process)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  t0 = time.time()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    ps, peak = psutil.Process(proc.pid), 0
    while True:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      peak = max(peak, tree_rss(ps))
      time.sleep(0.05)
  seconds = time.time() - t0
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    with open(log_path) as f:
      raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{f.read()[-3000:]}")
  return {"seconds": seconds, "peak_gb": max(peak, usage.ru_maxrss * 1024) / 2**30}


def prepare(inputs: list[str], out: str, corpus_id: str) -> dict:
  """`out` prepared from `inputs` (files or globs; python -m wgqa_jax.prepare_corpus), unless
  already there from the same generated corpus (`corpus_id`)."""
  files = [f for pattern in inputs for f in sorted(glob.glob(pattern))]
  record_path = out + ".stats.json"
  manifest_path = os.path.join(out, "corpus.json")
  if os.path.exists(record_path) and os.path.exists(manifest_path):
    with open(record_path) as f:
      record = json.load(f)
    with open(manifest_path) as f:
      manifest = json.load(f)
    if manifest["inputs"] == files == record.get("inputs") and record.get("corpus_id") == corpus_id:
      print(
        f"prepared: {out} already there (prepared {record['date']} in {record['seconds']:.0f} s)",
        flush=True,
      )
      return dict(record, reused=True)
  cmd = [
    sys.executable,
    "-m",
    "wgqa_jax.prepare_corpus",
    *[f"--input={i}" for i in inputs],
    f"--out={out}",
    "--overwrite",
  ]
  print(f"preparing: {' '.join(cmd[1:])}", flush=True)
  r = run_measured(cmd, out + ".log")
  with open(manifest_path) as f:
    splits = json.load(f)["splits"]
  record = {
    "inputs": files,
    "corpus_id": corpus_id,
    "input_bytes": sum(os.path.getsize(p) for p in files),
    "command": "python " + " ".join(cmd[1:]),
    "date": str(datetime.date.today()),
    "documents": sum(s["documents"] for s in splits.values()),
    "train_documents": splits["train"]["documents"],
    "validation_documents": splits["validation"]["documents"],
    "text_bytes": sum(s["bytes"] for s in splits.values()),
    "shards": sum(len(s["files"]) for s in splits.values()),
    "prepared_bytes": sum(
      os.path.getsize(os.path.join(out, n)) for s in splits.values() for n in s["files"]
    ),
    **r,
  }
  record["input_mb_s"] = record["input_bytes"] / 1e6 / r["seconds"]
  with open(record_path, "w") as f:
    json.dump(record, f, indent=1)
  print(
    f"prepared: {out}: {record['documents']} documents in {r['seconds']:.1f} s "
    f"({record['input_mb_s']:.0f} MB/s), peak RSS {r['peak_gb']:.2f} GB",
    flush=True,
  )
  return dict(record, reused=False)


# ----------------------------------------------------------------------------------------------
# 3. Start-up and memory over the first steps
# ----------------------------------------------------------------------------------------------
OBJECTIVES = {
  "span_corruption": ("configs/tiny.py", "tiny T5", ["--config.data.objective=span_corruption"]),
  "causal_lm": (
    "configs/llama_tiny.py",
    "tiny Llama",
    ["--config.data.objective=causal_lm", "--config.optim.loss_on=all"],
  ),
}
COMMON = [
  "--config.data.max_input_length=512",
  "--config.data.max_target_length=114",
  "--config.optim.batch_size=8",
  "--config.eval.examples=16",
  "--config.data.workers=1",
]


def run_train(workdir: str, config: str, overrides: list[str], steps: int, timeout: float) -> dict:
  """benchmarks/data_pipeline.py's run_train with the RSS of the process tree at every logged
  step: start a train run, wait for `steps` logged steps, kill it."""
  cmd = [
    sys.executable,
    "-m",
    "wgqa_jax.train",
    f"--config={config}",
    f"--workdir={workdir}",
    "--config.log_every=1",
    "--config.eval.every=0",
    "--config.checkpoint.every=100000",
    f"--config.optim.num_train_steps={steps + 5}",
    *overrides,
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  log_path = workdir + ".log"
  t0 = time.time()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  ps, peak, first, rows, rss = psutil.Process(proc.pid), 0, None, [], []
  path = os.path.join(workdir, "metrics.jsonl")
  try:
    while proc.poll() is None and time.time() - t0 < timeout:
      now_rss = tree_rss(ps)
      peak = max(peak, now_rss)
      if os.path.exists(path):
        with open(path) as f:
          rows = [json.loads(line) for line in f if line.strip()]
        rows = [r for r in rows if "train/loss" in r]
        if rows and first is None:
          first = time.time() - t0
        for r in rows[len(rss) :]:  # the RSS when each step's row appeared
          rss.append({"step": r["step"], "t": time.time() - t0, "rss_gb": now_rss / 2**30})
        if len(rows) >= steps:
          break
      time.sleep(0.05)
  finally:
    if proc.poll() is None:
      for child in ps.children(recursive=True):
        child.kill()
      proc.send_signal(signal.SIGKILL)
    proc.wait()
  if first is None or len(rows) < steps:
    with open(log_path) as f:
      raise RuntimeError(
        f"the run {'timed out' if proc.returncode == -9 else 'failed'} "
        f"after {len(rows)} of {steps} steps:\n{f.read()[-3000:]}"
      )
  steady = [r["train/steps_per_s"] for r in rows[3:]] or [r["train/steps_per_s"] for r in rows]
  # where the start-up goes, from what train writes on its way (seconds since the start):
  # config.json once the sources are open, spm.model once the tokenizer is trained,
  # checkpoints/ once the model is built; the train step compiles at the first step
  marks = {}
  for key, name in (
    ("sources_open_s", "config.json"),
    ("tokenizer_trained_s", "spm.model"),
    ("model_built_s", "checkpoints"),
  ):
    if os.path.exists(os.path.join(workdir, name)):
      marks[key] = os.path.getmtime(os.path.join(workdir, name)) - t0
  if "tokenizer_trained_s" in marks and "sources_open_s" in marks:
    marks["tokenizer_training_s"] = marks["tokenizer_trained_s"] - marks["sources_open_s"]
  window = max(1, min(10, len(rss) // 4))
  mean = lambda xs: sum(x["rss_gb"] for x in xs) / len(xs)  # noqa: E731
  return {
    "command": "python " + " ".join(cmd[1:]),
    "first_step_s": first,
    **marks,
    "rss_window": window,
    "rss_first_mean_gb": mean(rss[:window]),
    "rss_last_mean_gb": mean(rss[-window:]),
    "peak_gb": peak / 2**30,
    "rss_first_gb": rss[0]["rss_gb"],
    "rss_last_gb": rss[-1]["rss_gb"],
    "rss_min_gb": min(r["rss_gb"] for r in rss),
    "rss_max_gb": max(r["rss_gb"] for r in rss),
    "steps": len(rows),
    "steps_per_s": sum(steady) / len(steady),
    "rss": rss,
    "loss_first": rows[0]["train/loss"],
    "loss_last": rows[-1]["train/loss"],
    "padding": sum(r["train/padding"] for r in rows) / len(rows),
  }


def cnn_dm_rerun(data_dir: str, runs_dir: str, steps: int, timeout: float) -> dict:
  """The reference measured again here (benchmarks/data_pipeline.py section 1's run): the
  CNN/DailyMail-shaped TFDS dataset of `data_dir`/287k if there (data_pipeline.py builds it),
  else `data_dir`/10k, built here if missing (python -m wgqa_jax.local_tfds)."""
  d, label = os.path.join(data_dir, "287k"), "287k"
  if not os.path.isdir(d):
    d, label = os.path.join(data_dir, "10k"), "10k"
    cmd = [
      sys.executable,
      "-m",
      "wgqa_jax.local_tfds",
      "--dataset=cnn_dailymail",
      f"--data_dir={d}",
      "--train=10000",
      "--eval=1000",
    ]
    print(
      f"reference: building {d} (CNN/DailyMail-shaped, 10k articles) if missing ...", flush=True
    )
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  over = [
    "--config.data.dataset=cnn_dailymail",
    "--config.data.max_input_length=512",
    "--config.data.max_target_length=128",
    "--config.optim.batch_size=8",
    "--config.eval.examples=16",
    "--config.data.workers=1",
    f"--config.data.data_dir={d}",
  ]
  print(
    f"train: reference, tiny T5 on CNN/DailyMail-shaped pairs ({label}, {steps} steps) ...",
    flush=True,
  )
  r = run_train(
    os.path.join(runs_dir, f"reference_cnn_dm_{label}_{int(time.time())}"),
    "configs/tiny.py",
    over,
    steps,
    timeout,
  )
  r["label"] = label
  return r


def cnn_dm_reference() -> dict:
  """The CNN/DailyMail-shaped figure from benchmarks/RESULTS_data.md (287k articles)."""
  path = os.path.join(REPO, "benchmarks", "RESULTS_data.md")
  ref = dict(CNN_DM, source="benchmarks/RESULTS_data.md section 1 (constants)")
  if os.path.exists(path):
    text = open(path).read()
    m = re.search(r"^\| 287k \| ([\d.]+) s \| ([\d.]+) GB \|", text, re.M)
    d = re.search(r"^Device: (.*?)\s*$", text, re.M)
    if m:
      ref.update(
        first_step_s=float(m.group(1)),
        peak_gb=float(m.group(2)),
        source="benchmarks/RESULTS_data.md section 1",
      )
    if d:
      ref["device"] = d.group(1)
  return ref


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------
def device_line() -> str:
  import importlib.metadata

  import jax

  load = os.getloadavg()
  return (
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
    f"{psutil.virtual_memory().total / 2**30:.0f} GiB ({jax.default_backend().upper()}; "
    f"JAX {jax.__version__}, grain {importlib.metadata.version('grain')}, Python "
    f"{platform.python_version()}); load average at start {load[0]:.2f}"
  )


def write_results(
  a,
  gen: dict,
  lengths: dict,
  prepared: dict,
  runs: dict,
  ref: dict,
  rerun: dict | None,
  device: str,
  command: str,
  total_s: float,
) -> None:
  gb = lambda b: b / 1e9  # noqa: E731
  if gen["words"] == "english":
    text = (
      f"drawn from a Zipf law over {gen['vocabulary']:,} words (English function words, "
      "letter-level pseudo-words, numbers, a few non-ASCII)"
    )
  else:
    text = (
      f"drawn from a Zipf law over wgqa_jax.local_tfds's {gen['vocabulary']:,} syllable "
      "words (the CNN/DailyMail-shaped dataset's text)"
    )
  lines = [
    "# Continued pretraining on a C4-shaped local corpus",
    "",
    f"Command: `{command}`  ",
    f"Device: {device}  ",
    f"Date: {datetime.date.today()} (the whole benchmark: {total_s / 60:.1f} min)",
    "",
    "## Corpus",
    "",
    f"Generated by benchmarks/corpus_scale.py (seed {gen['seed']}; "
    f"{'reused from ' + gen['date'] if gen['reused'] else 'generated in this run'}): "
    f"{gen['documents']:,} documents, {gb(gen['text_bytes']):.2f} GB of text in "
    f"{FILES} JSON lines files of C4's records "
    '(`{"text", "timestamp", "url"}`), '
    f"{gb(gen['file_bytes']):.2f} GB on disk, written at {gen['text_mb_s']:.0f} MB/s of "
    f"text. Document text: mean {lengths['mean'] / 1e3:.2f} KB, median "
    f"{lengths['median'] / 1e3:.2f} KB, 99th percentile {lengths['p99'] / 1e3:.1f} KB, "
    f"longest {lengths['max'] / 1e3:.0f} KB (first {lengths['documents_read']:,} "
    f"documents; C4 en: ~365M documents, ~2.2 KB mean). Words log-normal per document "
    f"(median {MEDIAN_WORDS}, sigma {SIGMA}, {MIN_WORDS}..{MAX_WORDS}), {text}, mean "
    f"{gen['mean_word_length']:.1f} letters, in sentences and paragraphs (\"\\n\" "
    "between them).",
    "",
    "## One-time preparation and start-up to the first train step",
    "",
    "Prepare: `python -m wgqa_jax.prepare_corpus --input=FILES --out=DIR` (streamed; "
    "array_record shards + corpus.json), wall time and peak RSS of the process. "
    "Start-up: `python -m wgqa_jax.train` from process start to the first finished "
    "train step (sentencepiece vocabulary, 512 pieces + 100 sentinels for span "
    "corruption, trained on the fly on a bounded sample (1M characters of shuffled "
    "documents; the CNN/DM reference: 4M characters of articles); inputs 512 / "
    "targets 114 (causal LM: rows of 626 tokens), batch 8, 1 grain worker, a fresh "
    "workdir each time). Peak: resident memory of the run and its worker over the "
    f"start-up and {a.steps} logged steps; RSS at the first and the last logged step "
    "(one sample each, when the step's metrics row appears), and its mean over the "
    "first and the last steps: flat memory, the corpus is read by random access, never "
    "loaded.",
    "",
    "| corpus | documents | text GB | prepare (one-time) | prepare peak RSS | "
    "model, objective | start to first step | of which tokenizer training | peak RSS | "
    f"RSS at step 1 | RSS at step {a.steps} | RSS mean, first / last steps | steps/s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for label, p in prepared.items():
    for objective, r in runs.get(label, {}).items():
      model = OBJECTIVES[objective][1]
      n = len(p["inputs"])
      lines.append(
        f"| {label} ({n} file{'s' if n > 1 else ''}) | {p['documents']:,} | "
        f"{gb(p['text_bytes']):.2f} | {p['seconds']:.0f} s ({p['input_mb_s']:.0f} MB/s) | "
        f"{p['peak_gb']:.2f} GB | {model}, {objective} | {r['first_step_s']:.1f} s | "
        f"{r.get('tokenizer_training_s', float('nan')):.1f} s | {r['peak_gb']:.2f} GB | "
        f"{r['rss_first_gb']:.2f} GB | {r['rss_last_gb']:.2f} GB | "
        f"{r['rss_first_mean_gb']:.2f} / {r['rss_last_mean_gb']:.2f} GB "
        f"({r['rss_window']} steps) | {r['steps_per_s']:.1f} |"
      )
  lines.append("")
  reused = [label for label, p in prepared.items() if p.get("reused")]
  if reused:
    lines += [
      f"Preparation of {', '.join(reused)}: the figures recorded when it was done "
      f"({', '.join(prepared[x]['date'] for x in reused)}); reused here.",
      "",
    ]
  full = runs.get("full", {}).get("span_corruption")
  if full:
    within = full["first_step_s"] <= ref["first_step_s"]
    growth = full["rss_last_mean_gb"] - full["rss_first_mean_gb"]
    lines += [
      f"Against CNN/DailyMail-shaped pairs ({ref['source']}: {ref['label']} articles, tiny "
      f"T5, inputs 512 / targets 128, same batch, worker and tokenizer training; "
      f"{ref['first_step_s']} s to the first step, {ref['peak_gb']} GB peak"
      f"{'; device ' + ref['device'] if 'device' in ref else ''}): span corruption on the "
      f"{gb(prepared['full']['text_bytes']):.2f} GB corpus reaches its first step in "
      f"{full['first_step_s']:.1f} s ({full['first_step_s'] - ref['first_step_s']:+.1f} s, "
      f"{'within' if within else 'NOT within'} the CNN/DM figure) at "
      f"{full['peak_gb']:.2f} GB peak ({full['peak_gb'] - ref['peak_gb']:+.2f} GB); mean RSS "
      f"{full['rss_first_mean_gb']:.2f} GB over the first {full['rss_window']} steps and "
      f"{full['rss_last_mean_gb']:.2f} GB over the last {full['rss_window']} "
      f"({growth * 1024:+.0f} MB; single samples {full['rss_min_gb']:.2f}..."
      f"{full['rss_max_gb']:.2f} GB over the {full['steps']} steps).",
      "",
    ]
    if rerun:
      lines += [
        f"The reference measured again in this run, just before the full corpus's runs "
        f"(CNN/DailyMail-shaped {rerun['label']} articles, the same command as "
        f"benchmarks/data_pipeline.py section 1): {rerun['first_step_s']:.1f} s to the first "
        f"step (tokenizer training {rerun.get('tokenizer_training_s', float('nan')):.1f} s), "
        f"{rerun['peak_gb']:.2f} GB peak; span corruption on the full corpus: "
        f"{full['first_step_s'] - rerun['first_step_s']:+.1f} s "
        f"({'within' if full['first_step_s'] <= rerun['first_step_s'] else 'NOT within'}), "
        f"{full['peak_gb'] - rerun['peak_gb']:+.2f} GB peak.",
        "",
      ]
    if "tokenizer_trained_s" in full:
      lines += [
        f"Where its start-up goes: sources open (imports, corpus index) at "
        f"{full['sources_open_s']:.1f} s; sentencepiece trained on its sample by "
        f"{full['tokenizer_trained_s']:.1f} s ({full['tokenizer_training_s']:.1f} s); eval "
        f"rows and model built by {full.get('model_built_s', float('nan')):.1f} s; first "
        f"batch and the train step's compilation to {full['first_step_s']:.1f} s.",
        "",
      ]
  if "first" in runs and "full" in runs:
    ratio = prepared["full"]["documents"] / prepared["first"]["documents"]
    for objective in runs["full"]:
      if objective in runs["first"]:
        s, f = runs["first"][objective], runs["full"][objective]
        lines.append(
          f"- {objective}: {ratio:.0f}x the documents, start-up "
          f"{s['first_step_s']:.1f} -> {f['first_step_s']:.1f} s, peak "
          f"{s['peak_gb']:.2f} -> {f['peak_gb']:.2f} GB."
        )
    lines.append("")
  lines += [
    "The page cache holds the prepared shards (written just before, or read by an "
    "earlier run): a first read from a cold disk is the disk's business. Timings on a "
    "machine shared with other work vary by seconds; the load average at the start is "
    "on the device line. Raw numbers (RSS at every step, commands): "
    f"{os.path.basename(a.results_json)}."
  ]
  with open(a.results, "w") as f:
    f.write("\n".join(lines) + "\n")
  raw = {
    "command": command,
    "device": device,
    "date": str(datetime.date.today()),
    "total_s": total_s,
    "corpus": gen,
    "document_lengths": lengths,
    "prepared": prepared,
    "runs": runs,
    "cnn_dm_reference": ref,
    "cnn_dm_rerun": rerun,
  }
  with open(a.results_json, "w") as f:
    json.dump(raw, f, indent=1)
  print(f"wrote {a.results} and {a.results_json}", flush=True)


FLAGS = cli.flag_set()
flags.DEFINE_float("gb", 2.1, "GB (1e9 bytes) of document text", flag_values=FLAGS)
flags.DEFINE_string("dir", "/tmp/c4_shaped", "corpus, prepared dirs and runs", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "corpus seed", flag_values=FLAGS)
flags.DEFINE_enum(
  "words",
  "english",
  ["english", "cnn_dm"],
  "english: function words and letter-level pseudo-words (default); cnn_dm: "
  "wgqa_jax.local_tfds's ~4,600 syllable words, the text of the "
  "CNN/DailyMail-shaped dataset (a sentencepiece sample as easy as its)",
  flag_values=FLAGS,
)
flags.DEFINE_integer("steps", 60, "logged steps per train run", flag_values=FLAGS)
flags.DEFINE_string(
  "objectives", "span_corruption,causal_lm", "objectives to run", flag_values=FLAGS
)
flags.DEFINE_string("corpora", "first,full", "first (file 1 of 16) and/or full", flag_values=FLAGS)
flags.DEFINE_float("timeout", 900, "seconds per train run", flag_values=FLAGS)
flags.DEFINE_string(
  "reference_dir",
  None,
  "also measure the CNN/DailyMail-shaped reference "
  "again, here and now, on DIR/287k (benchmarks/data_pipeline.py's) or DIR/10k "
  "(built if missing)",
  flag_values=FLAGS,
)
flags.DEFINE_bool("generate_only", False, "stop after the corpus", flag_values=FLAGS)
flags.DEFINE_string(
  "results",
  os.path.join(REPO, "benchmarks", "RESULTS_corpus.md"),
  "results file",
  flag_values=FLAGS,
)
flags.DEFINE_string("results_json", None, "default: --results with .json", flag_values=FLAGS)


class Args:
  """The parsed flags, with the paths made absolute (the functions below take it as `a`)."""

  def __init__(self, fv):
    for name in fv:
      setattr(self, name, fv[name].value)
    self.dir = os.path.abspath(os.path.expanduser(self.dir))
    self.results_json = self.results_json or os.path.splitext(self.results)[0] + ".json"


def main(argv: list[str] | None = None) -> int:
  a = Args(cli.parse(FLAGS, argv, "benchmarks/corpus_scale.py"))
  objectives = [o for o in a.objectives.split(",") if o]
  corpora_ = [c for c in a.corpora.split(",") if c]
  for o in objectives:
    if o not in OBJECTIVES:
      raise ValueError(f"--objectives: {o!r} is not one of {sorted(OBJECTIVES)}")
  for c in corpora_:
    if c not in ("first", "full"):
      raise ValueError(f"--corpora: {c!r} is not first or full")
  command = "python benchmarks/corpus_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
  device = device_line()
  t_start = time.time()
  phases = {}

  t = time.time()
  gen = generate(a.dir, a.gb, a.seed, a.words)
  files = corpus_files(a.dir)
  lengths = document_lengths(files[0])
  phases["generate"] = time.time() - t
  if a.generate_only:
    return 0

  t = time.time()
  inputs = {"first": [files[0]], "full": [os.path.join(a.dir, f"c4-train.*-of-{FILES:05d}.json")]}
  prepared = {
    c: prepare(
      inputs[c], os.path.join(a.dir, "prepared" if c == "full" else "prepared_first"), gen["id"]
    )
    for c in corpora_
  }
  phases["prepare"] = time.time() - t

  t = time.time()
  runs_dir = os.path.join(a.dir, "runs")
  os.makedirs(runs_dir, exist_ok=True)
  runs: dict = {}
  rerun = None
  for c in corpora_:
    if c == "full" and a.reference_dir:  # just before the full corpus's runs: same conditions
      rerun = cnn_dm_rerun(os.path.abspath(a.reference_dir), runs_dir, a.steps, a.timeout)
      print(
        f"  first step {rerun['first_step_s']:.1f} s (tokenizer training "
        f"{rerun.get('tokenizer_training_s', float('nan')):.1f} s), peak "
        f"{rerun['peak_gb']:.2f} GB",
        flush=True,
      )
    dataset = os.path.join(a.dir, "prepared" if c == "full" else "prepared_first")
    for o in objectives:
      config, model, over = OBJECTIVES[o]
      workdir = os.path.join(runs_dir, f"{c}_{o}_{int(time.time())}")
      print(f"train: {c}, {model} {o} ({a.steps} steps) ...", flush=True)
      r = run_train(
        workdir, config, over + COMMON + [f"--config.data.dataset={dataset}"], a.steps, a.timeout
      )
      runs.setdefault(c, {})[o] = r
      print(
        f"  first step {r['first_step_s']:.1f} s (tokenizer training "
        f"{r.get('tokenizer_training_s', float('nan')):.1f} s), peak {r['peak_gb']:.2f} GB, "
        f"RSS step 1 {r['rss_first_gb']:.2f} GB -> step {r['steps']} "
        f"{r['rss_last_gb']:.2f} GB (means {r['rss_first_mean_gb']:.2f} -> "
        f"{r['rss_last_mean_gb']:.2f} GB), {r['steps_per_s']:.1f} steps/s",
        flush=True,
      )
  phases["train"] = time.time() - t
  for k, v in phases.items():
    print(f"phase {k}: {v:.1f} s", flush=True)
  write_results(
    a,
    gen,
    lengths,
    prepared,
    runs,
    cnn_dm_reference(),
    rerun,
    device,
    command,
    time.time() - t_start,
  )
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
