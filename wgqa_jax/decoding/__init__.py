"""Everything a model needs to generate, with Hugging Face `generate()` semantics:

- settings.py    GenerationConfig and the per-task settings a params dir keeps
- processors.py  the logits processors (repetition penalty, n-gram blocking, min length, warpers)
- search.py      one sample loop (greedy / sampling) and one beam loop over a family's
                 `Decoder`, and `generate(params, cfg, inputs, gen, rng)`, which picks the family
- t5.py, llama.py  the per-family adapters: `begin` (encode or prefill, the cache of G heads,
                 one step, cache reorder, the prefix the processors see) and `cache_bytes`
- batches.py     decode_batches / predict over a tokenized split (train's eval, evaluate)
"""
from wgqa_jax.decoding.batches import decode_batches, predict, strip
from wgqa_jax.decoding.search import family_of, generate
from wgqa_jax.decoding.settings import GenerationConfig


def cache_bytes(cfg, batch: int, prompt_len: int, max_new_tokens: int) -> int:
  """Bytes of a decode cache of `batch` rows (T5: prompt_len is the encoder's input length)."""
  return family_of(cfg).cache_bytes(cfg, batch, prompt_len, max_new_tokens)
