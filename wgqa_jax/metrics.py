"""ROUGE (rouge-score, with our own sentence splitting for ROUGE-Lsum) and BLEU (sacrebleu)."""
from __future__ import annotations

import re

import numpy as np

_SENT = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> str:
  """ROUGE-Lsum wants one sentence per line; rouge-score would need NLTK data for this."""
  return "\n".join(s.strip() for s in _SENT.split(text.strip()) if s.strip())


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
  """Mean F-measure x 100 of rouge1, rouge2, rougeL, rougeLsum (Porter stemmer)."""
  from rouge_score import rouge_scorer
  keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
  scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
  scores = {k: [] for k in keys}
  for p, r in zip(predictions, references):
    s = scorer.score(split_sentences(r), split_sentences(p))
    for k in keys:
      scores[k].append(s[k].fmeasure)
  return {k: 100.0 * float(np.mean(v)) if v else 0.0 for k, v in scores.items()}


def bleu(predictions: list[str], references: list[str]) -> dict[str, float]:
  import sacrebleu
  return {"bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score)}
