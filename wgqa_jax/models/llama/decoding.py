"""The decoder-only family's adapter (models/llama.py) to the search loops
(wgqa_jax.decoding.search).

Prompts are left-padded (b, s) with an attention mask, as HF's decoder-only `generate` expects:
positions are the mask's cumulative sum - 1 and the cache has s + max_new_tokens slots per row,
with G KV heads: (rows, s + max_new_tokens, G, head_dim) per layer. The prompt's first s - 1
tokens fill the cache once per input, which its copies (beams or samples) then share; the loop
feeds the last prompt token first. As HF's processors read input_ids, the repetition penalty,
n-gram blocking and min_length see the padded prompt.

Without a mask, the inputs are the pipeline's right-padded rows `input EOS`, whose prompts are
`[BOS] input EOS` (wgqa_jax.models.llama.causal_view): the answer the model was trained to
continue with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wgqa_jax.models.attention import cache_width
from wgqa_jax.models.family import Decoder
from wgqa_jax.models.llama import causal_view
from wgqa_jax.models.llama.config import LlamaConfig
from wgqa_jax.models.llama.model import Llama


def begin(params, cfg: LlamaConfig, inputs, attention_mask, copies: int, max_new_tokens: int):
  """The Decoder of `copies` rows per prompt."""
  if attention_mask is None:
    inputs, attention_mask = causal_view.prompts(inputs, cfg.eos_token_id, cfg.pad_token_id)
  m = Llama(cfg)
  b, s = inputs.shape
  attention_mask = attention_mask.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
  cache = m.apply({"params": params}, b, s + max_new_tokens, method=Llama.init_cache)
  key_mask = jnp.concatenate([attention_mask, jnp.ones((b, max_new_tokens), jnp.int32)], axis=1)
  if s > 1:
    _, cache = m.apply(
      {"params": params}, inputs[:, :-1], positions[:, :-1], cache, 0, key_mask, method=Llama.extend
    )
  rows = lambda x: jnp.repeat(x, copies, axis=0)  # copies adjacent
  cache, key_mask, ids = jax.tree.map(rows, (cache, key_mask, inputs.astype(jnp.int32)))
  last_position = rows(positions[:, -1])

  def step(tokens, i, cache):
    return m.apply(
      {"params": params},
      tokens[:, None],
      (last_position + i)[:, None],
      cache,
      s - 1 + i,
      key_mask,
      method=Llama.extend,
    )

  def reorder(cache, rows):
    return [{"k": c["k"][rows], "v": c["v"][rows]} for c in cache]

  return Decoder(step=step, cache=cache, first=ids[:, -1], prefix=ids, reorder=reorder)


def cache_bytes(cfg: LlamaConfig, batch: int, prompt_len: int, max_len: int) -> int:
  """Bytes of the decode cache for prompt_len + max_len slots: K/V of each layer's G heads
  (MLA: its latent and rotary key heads)."""
  per_token = sum(
    cache_width(cfg.grouping_at(path), cfg.num_heads, cfg.head_dim, True)
    for path in cfg.cached_modules()
  )
  return int(batch * (prompt_len + max_len) * per_token * jnp.dtype(cfg.dtype).itemsize)
