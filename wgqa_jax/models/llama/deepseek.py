"""The DeepSeek-V3 form of a Llama-architecture MLA model (`DeepseekV3ForCausalLM` in
transformers): what `--export=deepseek` writes for a model converted with variant mla.

Our MLA attention (models.attention) maps onto DeepSeek's without q_lora (q_proj,
kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj), every layer dense
(first_k_dense_replace = layers: its MLP is Llama's SwiGLU), qk_nope_head_dim = qk_rope_head_dim
= v_head_dim = head_dim, one rotary key head (rope_interleave False: HF's rotate-half, the same
frequencies as ours since the rotary head has head_dim dims). Two things differ, and the export
makes up for both exactly:

- DeepSeek scales logits by (nope + rope dims)^-0.5 = (2 head_dim)^-0.5, we by head_dim^-0.5: the
  query kernels are multiplied by sqrt(2).
- DeepSeek normalises the latent (kv_a_layernorm, RMSNorm with eps 1e-6) and ours has no norm. The
  export adds one latent channel that is the constant BIAS (attention_bias=True gives
  kv_a_proj_with_mqa a bias, zero elsewhere; o_proj's bias is zero): the norm then divides every
  token's latent by sqrt((|c|^2 + BIAS^2) / (r + 1)), which is BIAS / sqrt(r + 1) to a relative
  |c|^2 / (2 BIAS^2) (about 1e-9 for latents of norm 50), and the norm's weights BIAS / sqrt(r + 1)
  undo it; the constant channel's weight is 0. BIAS = 2^20 is exact in bfloat16, so the model
  loaded in bfloat16 carries the same constant; float16 cannot hold it (load it in float32 or
  bfloat16).

Layers with their own ranks (mla-allocated) are written at the largest rank, the others' latents
padded with zero channels: the same function, and HF's cache holds that rank in every layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wgqa_jax.core.errors import UserError

ARCHITECTURE = "DeepseekV3ForCausalLM"
MODEL_TYPE = "deepseek_v3"
BIAS = float(2**20)


def check(cfg) -> None:
  """A one-line refusal for an MLA model the DeepSeek-V3 form cannot hold."""
  g = cfg.grouping
  if not g.latent:
    raise UserError(
      "--export=deepseek writes MLA models (variant mla); this one has "
      f"{g.describe(cfg.num_heads)}: export it as hf"
    )
  if g.rope_heads != 1:
    raise UserError(
      f"DeepSeek-V3 has one rotary key head; this model has {g.rope_heads}: it stays in our format"
    )


def ranks(cfg) -> list[int]:
  return [cfg.grouping_at((f"layers_{i}", "attention")).latent_rank for i in range(cfg.num_layers)]


def config(plain: dict[str, Any], cfg) -> dict[str, Any]:
  """The DeepSeek-V3 config.json of `cfg`, from its plain Llama one."""
  check(cfg)
  out = {k: v for k, v in plain.items() if k not in ("head_dim", "mlp_bias", "rope_theta")}
  out.update(
    architectures=[ARCHITECTURE],
    model_type=MODEL_TYPE,
    num_key_value_heads=cfg.num_heads,
    q_lora_rank=None,
    kv_lora_rank=max(ranks(cfg)) + 1,  # + the constant channel
    qk_nope_head_dim=cfg.head_dim,
    qk_rope_head_dim=cfg.head_dim,
    v_head_dim=cfg.head_dim,
    rope_interleave=False,
    rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    attention_bias=True,
    first_k_dense_replace=cfg.num_layers,  # every layer dense: no expert is used
    n_routed_experts=1,
    n_shared_experts=1,
    num_experts_per_tok=1,
    n_group=1,
    topk_group=1,
    moe_intermediate_size=cfg.intermediate_size,
    num_nextn_predict_layers=0,
  )
  return out


def attention_state(module: dict, cfg, rank: int, pre: str) -> dict[str, np.ndarray]:
  """One layer's MLA params (our layout) -> its DeepSeek-V3 tensors ([out, in], HF's)."""
  f32 = lambda x: np.asarray(x, np.float64)
  q, q_rope, latent = f32(module["q"]), f32(module["q_rope"])[:, :, 0], f32(module["latent"])
  k_rope, k_up, v_up, o = (f32(module[n]) for n in ("k_rope", "k_up", "v_up", "o"))
  d, h, dk = q.shape
  r = latent.shape[1]
  width = rank + 1  # padded latent + the constant channel (last)
  scale = np.sqrt(2.0)  # (2 dk)^-0.5 in HF, dk^-0.5 in ours
  q_proj = np.concatenate([q, q_rope], axis=2) * scale  # (d, H, 2 dk): per head [nope | rope]
  kv_a = np.zeros((d, width + dk))
  kv_a[:, :r] = latent
  kv_a[:, width:] = k_rope[:, 0]
  bias = np.zeros(width + dk)
  bias[rank] = BIAS
  norm = np.zeros(width)
  norm[:r] = BIAS / np.sqrt(width)
  kv_b = np.zeros((width, h, 2 * dk))  # per head [k_nope | v]
  kv_b[:r, :, :dk], kv_b[:r, :, dk:] = k_up, v_up
  out = {
    "q_proj.weight": q_proj.reshape(d, -1).T,
    "kv_a_proj_with_mqa.weight": kv_a.T,
    "kv_a_proj_with_mqa.bias": bias,
    "kv_a_layernorm.weight": norm,
    "kv_b_proj.weight": kv_b.reshape(width, -1).T,
    "o_proj.weight": o.reshape(h * dk, d).T,
    "o_proj.bias": np.zeros(d),
  }
  return {f"{pre}.self_attn.{k}": np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def state_dict(params, cfg, rest: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The DeepSeek-V3 state dict: `rest` (the plain Llama table's tensors that are not
  attention: embeddings, norms, MLPs, head) plus every layer's attention."""
  check(cfg)
  rank = max(ranks(cfg))
  out = {k: v for k, v in rest.items() if ".self_attn." not in k}
  for i in range(cfg.num_layers):
    module = params[f"layers_{i}"]["attention"]
    out.update(attention_state(module, cfg, rank, f"model.layers.{i}"))
  return out
