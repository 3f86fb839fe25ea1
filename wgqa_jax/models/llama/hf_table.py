"""The Llama-architecture Hugging Face key table: our param paths <-> `LlamaForCausalLM` /
`MistralForCausalLM` state-dict keys (wgqa_jax.store.hf reads and writes by it, both ways)."""

from __future__ import annotations

from collections.abc import Iterator

from wgqa_jax.models.family import HFRow as Row
from wgqa_jax.models.llama.config import LlamaConfig


def table(cfg: LlamaConfig) -> Iterator[Row]:
  yield Row(("embed", "embedding"), "model.embed_tokens.weight", "same")
  for i in range(cfg.num_layers):
    ours, pre = (f"layers_{i}",), f"model.layers.{i}"
    yield Row(ours + ("input_norm", "scale"), f"{pre}.input_layernorm.weight", "same")
    yield Row(
      ours + ("post_attention_norm", "scale"), f"{pre}.post_attention_layernorm.weight", "same"
    )
    if not cfg.grouping.latent:  # MLA's attention: deepseek.py writes it
      for w in "qkv":
        yield Row(ours + ("attention", w), f"{pre}.self_attn.{w}_proj.weight", "heads_in")
      yield Row(ours + ("attention", "o"), f"{pre}.self_attn.o_proj.weight", "heads_out")
    for ours_name, hf_name in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
      yield Row(ours + ("mlp", ours_name), f"{pre}.mlp.{hf_name}.weight", "T")
  yield Row(("final_norm", "scale"), "model.norm.weight", "same")
  if not cfg.tie_word_embeddings:
    yield Row(("lm_head",), "lm_head.weight", "T")
