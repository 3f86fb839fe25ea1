"""T5's Hugging Face key table: our param paths <-> `T5ForConditionalGeneration` state-dict
keys (wgqa_jax.store.hf reads and writes by it, in both directions)."""

from __future__ import annotations

from collections.abc import Iterator

from wgqa_jax.models.family import HFRow as Row
from wgqa_jax.models.t5.config import T5Config

_T5_ATTENTION = {  # our module -> (HF sub-layer index, HF module name, our norm name)
  ("encoder", "attention"): (0, "SelfAttention", "attention_norm"),
  ("decoder", "self_attention"): (0, "SelfAttention", "self_attention_norm"),
  ("decoder", "cross_attention"): (1, "EncDecAttention", "cross_attention_norm"),
}
_T5_MLP_INDEX = {"encoder": 1, "decoder": 2}


def table(cfg: T5Config) -> Iterator[Row]:
  yield Row(
    ("shared", "embedding"),
    "shared.weight",
    "same",
    ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
  )
  for stack, n in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    yield Row(
      (stack, "relpos_bias", "rel_embedding"),
      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
      "same",
    )
    for i in range(n):
      ours = (stack, f"layers_{i}")
      for (st, module), (j, hf_name, norm) in _T5_ATTENTION.items():
        if st != stack:
          continue
        pre = f"{stack}.block.{i}.layer.{j}"
        yield Row(ours + (norm, "scale"), f"{pre}.layer_norm.weight", "same")
        for w in "qkv":
          yield Row(ours + (module, w), f"{pre}.{hf_name}.{w}.weight", "heads_in")
        yield Row(ours + (module, "o"), f"{pre}.{hf_name}.o.weight", "heads_out")
      pre = f"{stack}.block.{i}.layer.{_T5_MLP_INDEX[stack]}"
      yield Row(ours + ("mlp_norm", "scale"), f"{pre}.layer_norm.weight", "same")
      for w in (("wi_0", "wi_1") if cfg.is_gated else ("wi",)) + ("wo",):
        yield Row(ours + ("mlp", w), f"{pre}.DenseReluDense.{w}.weight", "T")
    yield Row((stack, "final_norm", "scale"), f"{stack}.final_layer_norm.weight", "same")
  if not cfg.tie_word_embeddings:
    # transformers >= 5 drops lm_head.weight when it equals the embedding.
    yield Row(("lm_head",), "lm_head.weight", "T", ("shared.weight",))
