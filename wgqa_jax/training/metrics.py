"""ROUGE (rouge-score, with our own sentence splitting for ROUGE-Lsum) and BLEU (sacrebleu),
with bootstrap confidence intervals."""

from __future__ import annotations

import re

import numpy as np

_SENT = re.compile(r"(?<=[.!?])\s+")
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def split_sentences(text: str) -> str:
  """ROUGE-Lsum wants one sentence per line; rouge-score would need NLTK data for this."""
  return "\n".join(s.strip() for s in _SENT.split(text.strip()) if s.strip())


def rouge_per_example(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
  """F-measure x 100 of each example for rouge1/2/L/Lsum (Porter stemmer)."""
  from rouge_score import rouge_scorer

  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
  scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
  scores = {k: [] for k in ROUGE_KEYS}
  for p, r in zip(predictions, references):
    s = scorer.score(split_sentences(r), split_sentences(p))
    for k in ROUGE_KEYS:
      scores[k].append(100.0 * s[k].fmeasure)
  return {k: np.asarray(v, np.float64) for k, v in scores.items()}


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
  """Mean F-measure x 100 of rouge1, rouge2, rougeL, rougeLsum."""
  per = rouge_per_example(predictions, references)
  return {k: float(v.mean()) if len(v) else 0.0 for k, v in per.items()}


def bleu(predictions: list[str], references: list[str]) -> dict[str, float]:
  import sacrebleu

  return {"bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score)}


def bootstrap_ci(
  values: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
  """Percentile bootstrap CI of the mean of per-example values."""
  values = np.asarray(values, np.float64)
  if len(values) == 0:
    return (0.0, 0.0)
  idx = np.random.default_rng(seed).integers(0, len(values), (n, len(values)))
  means = values[idx].mean(axis=1)
  lo, hi = np.percentile(means, [50 * (1 - level), 100 - 50 * (1 - level)])
  return float(lo), float(hi)


def bleu_ci(predictions, references, n: int = 200, seed: int = 0, level: float = 0.95):
  """Bootstrap CI of corpus BLEU (resampling sentences)."""
  import sacrebleu

  rng = np.random.default_rng(seed)
  scores = []
  for _ in range(n):
    idx = rng.integers(0, len(predictions), len(predictions))
    scores.append(
      sacrebleu.corpus_bleu([predictions[i] for i in idx], [[references[i] for i in idx]]).score
    )
  lo, hi = np.percentile(scores, [50 * (1 - level), 100 - 50 * (1 - level)])
  return float(lo), float(hi)


MAIN_METRIC = {"rouge": "rougeLsum", "bleu": "bleu"}


def score(predictions, references, kind: str, bootstrap: int = 0) -> dict:
  """{"rouge1": {"mean": .., "ci95": [lo, hi] | None}, ...} for kind "rouge" (rouge1/2/L/Lsum) or
  "bleu" (wgqa_jax.data.tasks.metric_of says which); bootstrap resamples for the CIs, 0: none."""
  if kind == "bleu":
    ci = list(bleu_ci(predictions, references, max(bootstrap // 5, 20))) if bootstrap else None
    return {"bleu": {"mean": bleu(predictions, references)["bleu"], "ci95": ci}}
  if kind != "rouge":
    raise ValueError(f"unknown metric kind {kind!r}: rouge or bleu")
  per = rouge_per_example(predictions, references)
  return {
    k: {
      "mean": float(v.mean()) if len(v) else 0.0,
      "ci95": list(bootstrap_ci(v, bootstrap)) if bootstrap else None,
    }
    for k, v in per.items()
  }
