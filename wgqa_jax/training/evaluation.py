"""The evaluation a run does while it trains: held-out loss, and for tasks of pairs ROUGE or
BLEU of cached greedy decoding (cheap enough to run often; `python -m wgqa_jax.evaluate`
decodes with the checkpoint's settings); which metric best/ follows."""

from __future__ import annotations

import ml_collections
import numpy as np

from wgqa_jax import decoding
from wgqa_jax.core import sharding
from wgqa_jax.data import pipeline, tasks
from wgqa_jax.grouping import variants
from wgqa_jax.training import metrics

LOWER_IS_BETTER = ("loss", "perplexity")  # metrics whose minimum best/ keeps


def best_metric(c: ml_collections.ConfigDict) -> str:
  """The eval metric best/ follows: the config's, else ROUGE-Lsum / BLEU for pair tasks and
  the held-out loss for the pretraining objectives."""
  if c.eval.best_metric:
    return c.eval.best_metric
  if c.data.objective != "pairs":
    return "loss"
  return metrics.MAIN_METRIC[tasks.metric_of(c.data.dataset)]


def run_eval(params, cfg, c, split, tokenizer, mesh, eval_step) -> tuple[dict, list[str]]:
  """Eval loss and ROUGE / BLEU of the validation split; held-out loss and perplexity for the
  pretraining objectives. Returns (metrics, predictions)."""
  nll, n, preds = 0.0, 0.0, []
  if c.data.objective != "pairs":
    for batch in pipeline.eval_row_batches(split, c.eval.batch_size, tokenizer.pad_id):
      b_nll, b_n = eval_step(params, sharding.put_batch(batch, mesh))
      nll, n = nll + float(b_nll), n + float(b_n)
    loss = nll / max(n, 1.0)
    return {"eval/loss": loss, "eval/perplexity": float(np.exp(min(loss, 80.0)))}, []
  gen = decoding.GenerationConfig(
    max_new_tokens=c.eval.max_decode_length or c.data.max_target_length
  )
  for batch, texts in decoding.decode_batches(
    params, cfg, split, tokenizer, c.eval.batch_size, gen, mesh=mesh
  ):
    b_nll, b_n = eval_step(params, batch)
    nll, n, preds = nll + float(b_nll), n + float(b_n), preds + texts
  scores = metrics.score(preds, [t for _, t in split.texts], tasks.metric_of(c.data.dataset))
  return {
    "eval/loss": nll / max(n, 1.0),
    **{f"eval/{k}": v["mean"] for k, v in scores.items()},
  }, preds


def wgqa_weight_stats(params) -> dict[str, float]:
  """Summary of the learned WGQA weights (none: {})."""
  ws = variants.weights_flat(params)
  if not len(ws):
    return {}
  return {
    "wgqa/mean": float(ws.mean()),
    "wgqa/std": float(ws.std()),
    "wgqa/min": float(ws.min()),
    "wgqa/max": float(ws.max()),
  }
