"""Generation settings, with Hugging Face `generate()` names and meanings.

`GenerationConfig` holds the controls users evaluate with; it is frozen and hashable, so the
jitted loops (wgqa_jax.decoding.search) take it as a static argument. A params dir keeps the
checkpoint's settings in `generation.json` ({"generation_config", "task_specific_params"}, as
HF keeps them), and `for_task` picks a task's entry (t5-small's "summarization": 4 beams, ...).

As in HF, `min_length` and `max_length` count the decoder's prompt (T5's start token, a
decoder-only model's prompt); `min_new_tokens` / `max_new_tokens` do not.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

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
