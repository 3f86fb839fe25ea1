"""Generation settings, with Hugging Face `generate()` names and meanings.

`GenerationConfig` holds the controls users evaluate with; it is frozen and hashable, so the
jitted loops (wgqa_jax.decoding.search) take it as a static argument. A checkpoint's settings
are a dict {"generation_config", "task_specific_params"}, as HF keeps them (a params dir keeps
them in generation.json: wgqa_jax.store.generation_file), and `for_task` picks a task's entry
(t5-small's "summarization": 4 beams, ...).

As in HF, `min_length` and `max_length` count the decoder's prompt (T5's start token, a
decoder-only model's prompt); `min_new_tokens` / `max_new_tokens` do not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wgqa_jax.core.errors import UserError

EARLY_STOPPING = (True, False, "never")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  max_new_tokens: int = 64
  num_beams: int = 1
  do_sample: bool = False
  temperature: float = 1.0
  top_k: int = 50  # HF's default; applies when sampling
  top_p: float = 1.0
  length_penalty: float = 1.0  # beam scores are sum(log p) / generated_length ** length_penalty
  early_stopping: bool | str = False  # True: stop at num_beams finished; False: heuristic; "never"
  min_length: int = 0  # counts the decoder start token (HF); min_new_tokens wins
  min_new_tokens: int = 0
  no_repeat_ngram_size: int = 0
  repetition_penalty: float = 1.0
  num_return_sequences: int = 1

  def __post_init__(self):
    def bad(msg):
      raise UserError(f"generation: {msg}")

    if self.max_new_tokens < 1:
      bad(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.num_beams < 1:
      bad(f"num_beams must be >= 1, got {self.num_beams}")
    if self.early_stopping not in EARLY_STOPPING:
      bad(f"early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}")
    if self.num_beams > 1 and self.do_sample:
      bad("beam sampling is not supported; use num_beams=1 with do_sample, or do_sample=False")
    if self.num_return_sequences < 1 or (
      self.num_beams > 1 and self.num_return_sequences > self.num_beams
    ):
      bad(
        f"num_return_sequences={self.num_return_sequences} must be between 1 and num_beams="
        f"{self.num_beams}"
      )
    if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
      bad("greedy search returns one sequence: num_return_sequences needs do_sample or beams")
    if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
      bad("temperature must be > 0, top_p in (0, 1], top_k >= 0")
    if self.repetition_penalty <= 0:
      bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

  def replace(self, **changes) -> GenerationConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf(cls, d: dict[str, Any], **overrides) -> GenerationConfig:
    """From HF generation settings (generation_config.json, or a task_specific_params entry).
    HF's max_length counts the decoder start token: max_new_tokens = max_length - 1."""
    known = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in known and v is not None}
    if "max_new_tokens" not in kw and d.get("max_length"):
      kw["max_new_tokens"] = int(d["max_length"]) - 1
    return cls(**{**kw, **overrides})

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def for_task(settings: dict[str, Any], task: str, **overrides) -> GenerationConfig:
  """The settings for `task` ("summarization", "translation_...") if the checkpoint has them,
  else its generation_config, else HF's defaults; overrides (flags) win."""
  base = settings.get("generation_config", {})
  specific = settings.get("task_specific_params", {}).get(task, {})
  return GenerationConfig.from_hf({**base, **specific}, **overrides)
