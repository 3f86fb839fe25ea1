"""KV-cached generation for decoder-only models (models/llama.py), HF `generate()` semantics:
greedy search (equal to HF token for token) or sampling (temperature / top-k / top-p).

Prompts are left-padded (b, s) with an attention mask, as HF's decoder-only `generate` expects:
positions are the mask's cumulative sum - 1, the prompt fills cache slots 0..s-1 in one pass, each
new token takes the next slot. The cache holds G KV heads: (b, s + max_new_tokens, G, head_dim)
per layer. After EOS a row emits pad_token_id; the loop stops when every row is done.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from wgqa_jax import causal_view, generation
from wgqa_jax.generation import GenerationConfig
from wgqa_jax.models.llama import Llama
from wgqa_jax.models.llama_config import LlamaConfig


def check(gen: GenerationConfig) -> None:
  """The settings this decoder implements; others are an error, not silently ignored."""
  unsupported = {k: v for k, v in (("num_beams", gen.num_beams != 1),
                                   ("repetition_penalty", gen.repetition_penalty != 1.0),
                                   ("no_repeat_ngram_size", gen.no_repeat_ngram_size > 0),
                                   ("min_new_tokens", bool(gen.min_new_tokens)),
                                   ("min_length", bool(gen.min_length)),
                                   ("num_return_sequences", gen.num_return_sequences != 1))
                 if v}
  if unsupported:
    raise ValueError(f"decoder-only generation supports greedy search and sampling "
                     f"(temperature, top_k, top_p) for now, not {sorted(unsupported)}")


@partial(jax.jit, static_argnames=("cfg", "gen"))
def generate(params, input_ids, attention_mask, cfg: LlamaConfig, gen: GenerationConfig,
             rng=None):
  """New tokens (b, gen.max_new_tokens) after left-padded prompts, pad after EOS."""
  check(gen)
  m = Llama(cfg)
  b, s = input_ids.shape
  steps = gen.max_new_tokens
  attention_mask = attention_mask.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
  cache = m.apply({"params": params}, b, s + steps, method=Llama.init_cache)
  key_mask = jnp.concatenate([attention_mask, jnp.ones((b, steps), jnp.int32)], axis=1)
  logits, cache = m.apply({"params": params}, input_ids, positions, cache, 0, key_mask,
                          method=Llama.extend)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  pad, eos = cfg.pad_token_id, cfg.eos_token_id
  next_position = positions[:, -1] + 1
  seen = jnp.zeros((b, 1), bool)  # no repetition penalty: process_logits never reads it

  def pick(logits, out, i):
    scores = generation.process_logits(logits, out, seen, i, gen, eos, pad, gen.do_sample)
    if gen.do_sample:
      return jax.random.categorical(jax.random.fold_in(rng, i), scores).astype(jnp.int32)
    return jnp.argmax(scores, -1).astype(jnp.int32)

  def cond(state):
    i, _, _, done, _ = state
    return (i < steps) & ~jnp.all(done)

  def body(state):
    i, logits, out, done, cache = state
    tok = jnp.where(done, pad, pick(logits, out, i))
    out = jax.lax.dynamic_update_index_in_dim(out, tok, i, axis=1)
    done = done | (tok == eos)
    logits, cache = m.apply({"params": params}, tok[:, None], (next_position + i)[:, None],
                            cache, s + i, key_mask, method=Llama.extend)
    return i + 1, logits, out, done, cache

  state = (jnp.int32(0), logits, jnp.full((b, steps), pad, jnp.int32), jnp.zeros((b,), bool),
           cache)
  return jax.lax.while_loop(cond, body, state)[2]


@partial(jax.jit, static_argnames=("cfg", "gen"))
def generate_from_rows(params, inputs, cfg: LlamaConfig, gen: GenerationConfig, rng=None):
  """`generate` after each right-padded input row of the pipeline (its prompt: [BOS] input EOS,
  wgqa_jax.causal_view), the answer the model was trained to continue with."""
  ids, mask = causal_view.prompts(inputs, cfg.eos_token_id, cfg.pad_token_id)
  return generate(params, ids, mask, cfg, gen, rng)
