"""Everything a model needs to generate, with Hugging Face `generate()` semantics:

- settings.py    GenerationConfig, and a checkpoint's settings for a task (`for_task`)
- processors.py  the logits processors (repetition penalty, n-gram blocking, min length, warpers)
- search.py      one sample loop (greedy / sampling) and one beam loop over the `Decoder` a
                 model's family builds (models.family: the prompt or encoder output in a cache
                 of G heads, one step, cache reorder, the prefix the processors see), and
                 `generate(params, cfg, inputs, gen, rng)`
- batches.py     decode_batches / predict over a tokenized split (train's eval, evaluate)
"""

from wgqa_jax.decoding.batches import decode_batches, predict, strip
from wgqa_jax.decoding.search import generate
from wgqa_jax.decoding.settings import GenerationConfig
from wgqa_jax.models import family_of

__all__ = [
  "GenerationConfig",
  "cache_bytes",
  "cache_bytes_per_token",
  "decode_batches",
  "generate",
  "predict",
  "strip",
]


def cache_bytes(cfg, batch: int, prompt_len: int, max_new_tokens: int) -> int:
  """Bytes of a decode cache of `batch` rows (T5: prompt_len is the encoder's input length)."""
  return family_of(cfg).cache_bytes(cfg, batch, prompt_len, max_new_tokens)


def cache_bytes_per_token(cfg) -> int:
  """KV-cache bytes per cached token in cfg's dtype (prompt or generated; T5: per source token
  of cross K/V and per target token of self K/V, averaged: the same size unless the modules
  have their own G)."""
  return cache_bytes(cfg, 1, 1, 1) // 2
