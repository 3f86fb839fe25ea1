"""Generation settings and logits processing, with Hugging Face `generate()` semantics.

`GenerationConfig` holds the controls T5 users evaluate with (HF names and meanings); it is
frozen and hashable, so decode.py's jitted loops take it as a static argument.
`process_logits` applies them in HF's order: repetition penalty, no-repeat n-grams, min length,
min new tokens, then (sampling only) temperature, top-k, top-p.

As in HF, the ids before the generated ones (`prefix`) are the decoder's prompt: the start token
of an encoder-decoder, the (left-padded) prompt of a decoder-only model. `min_length` and
`max_length` count them, `min_new_tokens` / `max_new_tokens` do not, and the repetition penalty
and the n-gram blocking see them too (pads included, as HF's processors read input_ids).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf
EARLY_STOPPING = (True, False, "never")
# in a params dir: {"generation_config": {...}, "task_specific_params": {...}}
FILE = "generation.json"


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  max_new_tokens: int = 64
  num_beams: int = 1
  do_sample: bool = False
  temperature: float = 1.0
  top_k: int = 50                 # HF's default; applies when sampling
  top_p: float = 1.0
  length_penalty: float = 1.0     # beam scores are sum(log p) / generated_length ** length_penalty
  early_stopping: bool | str = False  # True: stop at num_beams finished; False: heuristic; "never"
  min_length: int = 0             # counts the decoder start token (HF); min_new_tokens wins
  min_new_tokens: int = 0
  no_repeat_ngram_size: int = 0
  repetition_penalty: float = 1.0
  num_return_sequences: int = 1

  def __post_init__(self):
    def bad(msg):
      raise ValueError(f"generation: {msg}")
    if self.max_new_tokens < 1:
      bad(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.num_beams < 1:
      bad(f"num_beams must be >= 1, got {self.num_beams}")
    if self.early_stopping not in EARLY_STOPPING:
      bad(f"early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}")
    if self.num_beams > 1 and self.do_sample:
      bad("beam sampling is not supported; use num_beams=1 with do_sample, or do_sample=False")
    if self.num_return_sequences < 1 or (self.num_beams > 1
                                         and self.num_return_sequences > self.num_beams):
      bad(f"num_return_sequences={self.num_return_sequences} must be between 1 and num_beams="
          f"{self.num_beams}")
    if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
      bad("greedy search returns one sequence: num_return_sequences needs do_sample or beams")
    if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
      bad("temperature must be > 0, top_p in (0, 1], top_k >= 0")
    if self.repetition_penalty <= 0:
      bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

  def replace(self, **changes) -> "GenerationConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf(cls, d: dict[str, Any], **overrides) -> "GenerationConfig":
    """From HF generation settings (generation_config.json, or a task_specific_params entry).
    HF's max_length counts the decoder start token: max_new_tokens = max_length - 1."""
    known = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in known and v is not None}
    if "max_new_tokens" not in kw and d.get("max_length"):
      kw["max_new_tokens"] = int(d["max_length"]) - 1
    return cls(**{**kw, **overrides})

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Settings kept with a params dir
# ----------------------------------------------------------------------------------------------
def save(settings: dict[str, Any], out_dir: str) -> None:
  with open(os.path.join(out_dir, FILE), "w") as f:
    json.dump(settings, f, indent=2, sort_keys=True)


def load(params_dir: str) -> dict[str, Any]:
  """{"generation_config": ..., "task_specific_params": ...} of a params dir ({} if none)."""
  path = os.path.join(params_dir, FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def from_hf_dir(hf_dir: str, hf_config: dict[str, Any]) -> dict[str, Any]:
  """The generation settings of a HF checkpoint: generation_config.json and config.json's
  task_specific_params (t5-small's "summarization": 4 beams, length_penalty 2.0, ...)."""
  out: dict[str, Any] = {}
  path = os.path.join(hf_dir, "generation_config.json")
  if os.path.exists(path):
    with open(path) as f:
      out["generation_config"] = json.load(f)
  if hf_config.get("task_specific_params"):
    out["task_specific_params"] = hf_config["task_specific_params"]
  return out


def for_task(settings: dict[str, Any], task: str, **overrides) -> GenerationConfig:
  """The settings for `task` ("summarization", "translation_...") if the checkpoint has them,
  else its generation_config, else HF's defaults; overrides (flags) win."""
  base = settings.get("generation_config", {})
  specific = settings.get("task_specific_params", {}).get(task, {})
  return GenerationConfig.from_hf({**base, **specific}, **overrides)


# Offline default (configs/tiny*.py): what t5-small's summarization entry asks for, scaled to the
# built-in tasks' short targets (n-gram blocking off: their outputs repeat words on purpose).
OFFLINE_DEFAULT = {"task_specific_params": {
    "summarization": {"num_beams": 4, "length_penalty": 1.0, "early_stopping": True},
    "translation": {"num_beams": 4, "length_penalty": 1.0, "early_stopping": True}}}


# ----------------------------------------------------------------------------------------------
# Logits processing
# ----------------------------------------------------------------------------------------------
def prefix_ids(prefix, rows: int):
  """The decoder's ids before the generated ones as (rows, P): a start id (int) or an array."""
  prefix = jnp.asarray(prefix, jnp.int32)
  return jnp.full((rows, 1), prefix, jnp.int32) if prefix.ndim == 0 else prefix


def banned_ngrams(tokens, i, n: int, prefix, vocab: int):
  """(rows, V) True where a token would complete an n-gram that already occurs in the decoder
  ids [prefix, tokens[:i]] (HF NoRepeatNGramLogitsProcessor). tokens (rows, L); i traced;
  prefix: the start id, or (rows, P) prompt ids."""
  rows, length = tokens.shape
  full = jnp.concatenate([prefix_ids(prefix, rows), tokens.astype(jnp.int32)], 1)
  known = full.shape[1] - length + i  # ids so far: the prefix and i generated
  windows = full.shape[1] + 1 - n  # n-grams that fit in the buffer
  if windows <= 0:
    return jnp.zeros((rows, vocab), bool)
  if n == 1:  # every id seen so far is banned
    match = jnp.ones((rows, windows), bool)
  else:
    grams = jnp.stack([full[:, k:k + windows] for k in range(n - 1)], -1)  # (rows, J, n-1)
    last = jax.lax.dynamic_slice_in_dim(full, jnp.maximum(known + 1 - n, 0), n - 1, axis=1)
    match = jnp.all(grams == last[:, None, :], -1)
  # an n-gram j counts once all its n ids are known: its last id j + n - 1 < known
  match &= (jnp.arange(windows) + n - 1 < known)[None, :] & (known + 1 >= n)
  nxt = full[:, n - 1:n - 1 + windows]
  hit = jnp.zeros((rows, vocab), jnp.int32).at[jnp.arange(rows)[:, None], nxt].max(
      match.astype(jnp.int32))
  return hit > 0


def process_logits(scores, tokens, seen, i, gen: GenerationConfig, eos_id: int, prefix,
                   sampling: bool):
  """scores (rows, V) float32 (logits; log-probs in beam search, as HF); tokens (rows, L) the
  generated ids (the first i valid); seen (rows, V) ids in [prefix, tokens[:i]]; i: tokens
  generated so far (traced); prefix: the start id, or (rows, P) prompt ids."""
  if gen.repetition_penalty != 1.0:
    p = gen.repetition_penalty
    scores = jnp.where(seen, jnp.where(scores < 0, scores * p, scores / p), scores)
  if gen.no_repeat_ngram_size > 0:
    scores = jnp.where(banned_ngrams(tokens, i, gen.no_repeat_ngram_size, prefix,
                                     scores.shape[-1]), NEG_INF, scores)
  # HF counts the prefix in min_length (the current length is P + i); min_new_tokens, when set,
  # replaces min_length (HF sets min_length = min_new_tokens + prompt length)
  if gen.min_length > 0 and gen.min_new_tokens == 0:
    length = prefix_ids(prefix, scores.shape[0]).shape[1] + i
    scores = scores.at[:, eos_id].set(jnp.where(length < gen.min_length, NEG_INF,
                                                scores[:, eos_id]))
  if gen.min_new_tokens > 0:
    scores = scores.at[:, eos_id].set(jnp.where(i < gen.min_new_tokens, NEG_INF,
                                                scores[:, eos_id]))
  if sampling:
    if gen.temperature != 1.0:
      scores = scores / gen.temperature
    if gen.top_k > 0:
      k = min(gen.top_k, scores.shape[-1])
      kth = jax.lax.top_k(scores, k)[0][:, -1:]
      scores = jnp.where(scores < kth, NEG_INF, scores)
    if gen.top_p < 1.0:
      # HF: sort ascending, drop tokens whose cumulative probability is <= 1 - top_p; keep 1.
      order = jnp.argsort(scores, axis=-1)
      sorted_scores = jnp.take_along_axis(scores, order, -1)
      cum = jnp.cumsum(jax.nn.softmax(sorted_scores, -1), -1)
      remove_sorted = (cum <= 1 - gen.top_p).at[:, -1].set(False)
      remove = jnp.zeros_like(remove_sorted).at[jnp.arange(scores.shape[0])[:, None],
                                                order].set(remove_sorted)
      scores = jnp.where(remove, NEG_INF, scores)
  return scores


def mark_seen(seen, tokens):
  """seen (rows, V) with tokens (rows,) added."""
  return seen.at[jnp.arange(seen.shape[0]), tokens].set(True)


def seen_at_start(gen: GenerationConfig, prefix, rows: int, vocab: int):
  """Which ids the repetition penalty sees before the first new token: the prefix's (a (rows, 1)
  dummy when no penalty is asked for, so the loops carry no (rows, vocab) array for nothing)."""
  if gen.repetition_penalty == 1.0:
    return jnp.zeros((rows, 1), bool)
  ids = prefix_ids(prefix, rows)
  return jnp.zeros((rows, vocab), bool).at[jnp.arange(rows)[:, None], ids].set(True)
