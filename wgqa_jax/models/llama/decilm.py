"""The DeciLM / Nemotron-NAS form of a Llama-architecture model: a config.json with one
`block_configs` entry per layer, so that each layer has its own KV heads. Serving engines load
it natively: llama.cpp's converter makes it its `deci` architecture (whose graph takes each
layer's KV heads), and vLLM's `nemotron_nas` model reads it. The state dict is plain Llama's
(hf_table.py), each k_proj / v_proj holding its layer's G heads.

Both readers compute a layer's FFN width from a multiplier, not from a width:
find_multiple(int(2 * ffn_mult * hidden_size / 3), 256). So only an intermediate_size that is a
multiple of 256 can be written (Llama-2 7B/13B/70B, TinyLlama and Mistral all are); `ffn_mult`
is chosen so that this arithmetic gives it back, and checked with the readers' own formula.
"""

from __future__ import annotations

from typing import Any

from wgqa_jax.core.errors import UserError

ARCHITECTURE = "DeciLMForCausalLM"
MODEL_TYPE = "nemotron-nas"
FFN_MULTIPLE = 256  # DeciLM's find_multiple(..., 256), in llama.cpp's converter and vLLM


def intermediate_size(ffn_mult: float, hidden_size: int) -> int:
  """The FFN width a reader computes from `ffn_mult` (llama.cpp's
  DeciModel._ffn_mult_to_intermediate_size, vLLM's nemotron_nas the same)."""
  n = int(2 * ffn_mult * hidden_size / 3)
  return n if n % FFN_MULTIPLE == 0 else n + FFN_MULTIPLE - n % FFN_MULTIPLE


def ffn_mult(cfg) -> float:
  """The multiplier that gives cfg.intermediate_size back, or a one-line refusal."""
  mult = round(1.5 * cfg.intermediate_size / cfg.hidden_size, 6)
  if intermediate_size(mult, cfg.hidden_size) != cfg.intermediate_size:
    raise UserError(
      f"the DeciLM format gives each FFN's width as a multiple of {FFN_MULTIPLE} "
      f"(find_multiple(int(2 * ffn_mult * hidden_size / 3), {FFN_MULTIPLE})): intermediate_size "
      f"{cfg.intermediate_size} cannot be written; export with one G for all layers (plain HF "
      f"Llama) instead"
    )
  return mult


def block_configs(cfg) -> list[dict[str, Any]]:
  """One entry per layer: its attention's query heads per KV head, and its FFN multiplier."""
  if cfg.head_dim * cfg.num_heads != cfg.hidden_size:  # llama.cpp: key length = d / H
    raise UserError(
      f"the DeciLM format has head_dim = hidden_size / num_heads, and this model has "
      f"{cfg.head_dim} x {cfg.num_heads} heads for hidden_size {cfg.hidden_size}: export with one "
      f"G for all layers (plain HF Llama) instead"
    )
  mult = ffn_mult(cfg)
  blocks = []
  for i in range(cfg.num_layers):
    g = cfg.kv_heads_at((f"layers_{i}", "attention"))
    blocks.append(
      {
        "attention": {"n_heads_in_group": cfg.num_heads // g, "no_op": False,
                      "replace_with_linear": False},
        "ffn": {"ffn_mult": mult, "no_op": False, "replace_with_linear": False},
      }
    )  # fmt: skip
  return blocks


def config(plain: dict[str, Any], cfg) -> dict[str, Any]:
  """The DeciLM config.json of `cfg`, from its plain Llama one (`plain`): the per-layer KV heads
  and FFN widths move into block_configs."""
  out = {k: v for k, v in plain.items() if k not in ("num_key_value_heads", "intermediate_size")}
  out.update(architectures=[ARCHITECTURE], model_type=MODEL_TYPE, block_configs=block_configs(cfg))
  return out
