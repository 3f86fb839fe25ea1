"""KV-cached generation for decoder-only models (models/llama.py), HF `generate()` semantics:
greedy search, sampling (temperature / top-k / top-p) and beam search (wgqa_jax.beams), with the
logits processors of wgqa_jax.generation (repetition penalty, n-gram blocking, min length).

Prompts are left-padded (b, s) with an attention mask, as HF's decoder-only `generate` expects:
positions are the mask's cumulative sum - 1 and the cache has s + max_new_tokens slots per row.
The cache holds G KV heads: (rows, s + max_new_tokens, G, head_dim) per layer. As HF's processors
read input_ids, the repetition penalty, n-gram blocking and min_length see the padded prompt.
After EOS a row emits pad_token_id; the loops stop when every row is done.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from wgqa_jax import beams, causal_view, generation
from wgqa_jax.generation import GenerationConfig
from wgqa_jax.models.llama import Llama
from wgqa_jax.models.llama_config import LlamaConfig


def _prompt(params, input_ids, attention_mask, cfg: LlamaConfig, steps: int, upto: int):
  """Positions, an empty cache of s + steps slots, its key mask, and the cache filled with the
  prompt's first `upto` tokens; also the logits after them (None if upto == 0)."""
  m = Llama(cfg)
  b, s = input_ids.shape
  attention_mask = attention_mask.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
  cache = m.apply({"params": params}, b, s + steps, method=Llama.init_cache)
  key_mask = jnp.concatenate([attention_mask, jnp.ones((b, steps), jnp.int32)], axis=1)
  logits = None
  if upto:
    logits, cache = m.apply({"params": params}, input_ids[:, :upto], positions[:, :upto], cache,
                            0, key_mask, method=Llama.extend)
  return positions, cache, key_mask, logits


@partial(jax.jit, static_argnames=("cfg", "gen"))
def sample(params, input_ids, attention_mask, cfg: LlamaConfig, gen: GenerationConfig, rng=None):
  """Greedy search or sampling: (b * num_return_sequences, max_new_tokens), copies adjacent."""
  m = Llama(cfg)
  n, steps = gen.num_return_sequences, gen.max_new_tokens
  input_ids = jnp.repeat(input_ids, n, axis=0)
  attention_mask = jnp.repeat(attention_mask, n, axis=0)
  b, s = input_ids.shape
  positions, cache, key_mask, logits = _prompt(params, input_ids, attention_mask, cfg, steps, s)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  pad, eos = cfg.pad_token_id, cfg.eos_token_id
  next_position = positions[:, -1] + 1

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < steps) & ~jnp.all(done)

  def body(state):
    i, logits, out, done, seen, cache = state
    scores = generation.process_logits(logits, out, seen, i, gen, eos, input_ids, gen.do_sample)
    if gen.do_sample:
      tok = jax.random.categorical(jax.random.fold_in(rng, i), scores).astype(jnp.int32)
    else:
      tok = jnp.argmax(scores, -1).astype(jnp.int32)
    tok = jnp.where(done, pad, tok)
    out = jax.lax.dynamic_update_index_in_dim(out, tok, i, axis=1)
    done = done | (tok == eos)
    logits, cache = m.apply({"params": params}, tok[:, None], (next_position + i)[:, None],
                            cache, s + i, key_mask, method=Llama.extend)
    return i + 1, logits, out, done, generation.mark_seen(seen, tok), cache

  seen = generation.seen_at_start(gen, input_ids, b, cfg.vocab_size)
  state = (jnp.int32(0), logits, jnp.full((b, steps), pad, jnp.int32), jnp.zeros((b,), bool),
           seen, cache)
  return jax.lax.while_loop(cond, body, state)[2]


@partial(jax.jit, static_argnames=("cfg", "gen"))
def beam_search(params, input_ids, attention_mask, cfg: LlamaConfig, gen: GenerationConfig):
  """Beam search as HF `generate()` (wgqa_jax.beams): the prompt's first s - 1 tokens fill the
  cache once per input, which its k beams then share; the loop feeds the last prompt token
  first. Returns (b * num_return_sequences, max_new_tokens), best first."""
  m = Llama(cfg)
  k = gen.num_beams
  b, s = input_ids.shape
  positions, cache, key_mask, _ = _prompt(params, input_ids, attention_mask, cfg,
                                          gen.max_new_tokens, s - 1)
  beam_rows = lambda x: jnp.repeat(x, k, axis=0)  # beam-major per input
  cache, key_mask, ids = jax.tree.map(beam_rows, (cache, key_mask, input_ids))
  last_position = beam_rows(positions[:, -1])

  def step(tokens, i, cache):
    return m.apply({"params": params}, tokens[:, None], (last_position + i)[:, None], cache,
                   s - 1 + i, key_mask, method=Llama.extend)

  def reorder(cache, rows):
    return [{"k": c["k"][rows], "v": c["v"][rows]} for c in cache]

  return beams.search(step, cache, reorder, ids[:, -1], ids, b, gen, cfg.eos_token_id,
                      cfg.pad_token_id, cfg.vocab_size)


def generate(params, input_ids, attention_mask, cfg: LlamaConfig, gen: GenerationConfig,
             rng=None):
  """New tokens (b * num_return_sequences, gen.max_new_tokens) after left-padded prompts, pad
  after EOS: greedy, sampling or beam search as `gen` says."""
  if gen.num_beams > 1:
    return beam_search(params, input_ids, attention_mask, cfg, gen)
  return sample(params, input_ids, attention_mask, cfg, gen, rng)


@partial(jax.jit, static_argnames=("cfg", "gen"))
def generate_from_rows(params, inputs, cfg: LlamaConfig, gen: GenerationConfig, rng=None):
  """`generate` after each right-padded input row of the pipeline (its prompt: [BOS] input EOS,
  wgqa_jax.causal_view), the answer the model was trained to continue with."""
  ids, mask = causal_view.prompts(inputs, cfg.eos_token_id, cfg.pad_token_id)
  return generate(params, ids, mask, cfg, gen, rng)
