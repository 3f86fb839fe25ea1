"""Scores (wgqa_jax.training.metrics): ROUGE with our sentence splitting (no NLTK data here)."""

import pytest

from wgqa_jax.training import metrics


def test_rouge_uses_our_sentence_splitting():
  r = metrics.rouge(["the cat sat. the dog ran."], ["the cat sat. the dog ran."])
  assert r["rouge1"] == pytest.approx(100.0) and r["rougeLsum"] == pytest.approx(100.0)
  assert metrics.split_sentences("A b. C d! E") == "A b.\nC d!\nE"
  r = metrics.rouge(["completely different words"], ["the cat sat"])
  assert r["rouge1"] == 0.0
