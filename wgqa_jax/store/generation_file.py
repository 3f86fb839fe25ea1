"""A checkpoint's generation settings on disk: {"generation_config": {...},
"task_specific_params": {...}}, as HF keeps them. A params dir keeps them in generation.json;
a HF checkpoint in generation_config.json and config.json's task_specific_params.
wgqa_jax.decoding.settings.for_task turns them into a GenerationConfig."""

from __future__ import annotations

import json
import os
from typing import Any

FILE = "generation.json"  # in a params dir


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


# Offline default (configs/tiny*.py): what t5-small's summarization entry asks for, scaled to the
# built-in tasks' short targets (n-gram blocking off: their outputs repeat words on purpose).
OFFLINE_DEFAULT = {
  "task_specific_params": {
    "summarization": {"num_beams": 4, "length_penalty": 1.0, "early_stopping": True},
    "translation": {"num_beams": 4, "length_penalty": 1.0, "early_stopping": True},
  }
}
