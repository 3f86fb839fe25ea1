"""The Llama-architecture family: a decoder-only model (Llama 1/2/3, Mistral without sliding
window).

  config.py       LlamaConfig (HF's num_key_value_heads is the grouping) and the presets
  model.py        the Flax modules, init_params / param_shapes / param_axes
  hf_table.py     our params <-> HF LlamaForCausalLM / MistralForCausalLM keys
  causal_view.py  how a decoder-only model reads the pipeline's rows (prompt, then answer)
  decoding.py     the adapter to the search loops (left-padded prompts prefilled once)
  objective.py    the training loss inputs (next token; every token or the answer)
"""

from __future__ import annotations

from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping import variants
from wgqa_jax.models.family import Family
from wgqa_jax.models.llama import decoding, deepseek, hf_table, model, objective
from wgqa_jax.models.llama.config import MODEL_TYPES, PRESETS, LlamaConfig
from wgqa_jax.models.llama.model import Llama, init_params, param_axes, param_shapes

__all__ = ["FAMILY", "PRESETS", "Llama", "LlamaConfig", "init_params", "param_axes", "param_shapes"]


class LlamaFamily(Family):
  name = "llama"
  config_class = LlamaConfig
  presets = PRESETS
  hf_model_types = MODEL_TYPES
  title = "Llama"
  description = "decoder-only"
  objectives = ("pairs", "causal_lm")
  loss_on = ("all", "answer")
  eval_loss_on = "answer"
  # decilm: per-layer KV heads (decilm.py); deepseek: MLA (deepseek.py)
  hf_forms = ("hf", "decilm", "deepseek")

  def init_params(self, cfg, rng):
    return model.init_params(cfg, rng)

  def param_shapes(self, cfg):
    return model.param_shapes(cfg)

  def param_axes(self, cfg):
    return model.param_axes(cfg)

  def for_tokenizer(self, cfg, tokenizer):
    """A random decoder-only model takes the data's pad, EOS and BOS ids."""
    return cfg.replace(
      pad_token_id=tokenizer.pad_id,
      eos_token_id=tokenizer.eos_id,
      bos_token_id=(tokenizer.prefix or (tokenizer.eos_id,))[0],
    )

  def hf_table(self, cfg):
    return hf_table.table(cfg)

  def config_from_hf(self, hf, weights=None):
    return LlamaConfig.from_hf(hf)

  def hf_holds(self, cfg):
    g = cfg.grouping  # num_key_value_heads: plain equal groups, one G for every layer
    return (
      g.weights == "none"
      and not g.unequal
      and g.allocation == "static"
      and not g.per_module
      and not g.latent
    )

  def exportable(self, params, cfg, form="hf"):
    """WGQA weights folded, G heads kept: a native GQA checkpoint ("hf"), or per-layer G in the
    DeciLM form ("decilm")."""
    params, cfg = variants.fold(params, cfg)
    g = cfg.grouping
    if g.unequal or g.allocation != "static":
      raise UserError(
        f"{cfg.grouping.describe(cfg.num_heads)}: HF Llama and DeciLM hold equal groups "
        f"only; unequal or run-time groups cannot be exported"
      )
    cfg.to_hf(form)  # what the form cannot hold is refused here, before anything is written
    return params, cfg

  def hf_state_dict(self, params, cfg, form, tensors):
    return deepseek.state_dict(params, cfg, tensors) if form == "deepseek" else tensors

  def serving_form(self, cfg):
    if cfg.grouping.latent:
      raise UserError(
        "an MLA model is exported for transformers only (--export=deepseek): its latent norm "
        "needs a bias on kv_a_proj_with_mqa, which llama.cpp's deepseek2 graph does not read"
      )
    return "decilm" if cfg.grouping.per_module else "hf"

  def begin_decoding(self, params, cfg, inputs, attention_mask, copies, max_new_tokens):
    return decoding.begin(params, cfg, inputs, attention_mask, copies, max_new_tokens)

  def cache_bytes(self, cfg, batch, prompt_len, max_new_tokens):
    return decoding.cache_bytes(cfg, batch, prompt_len, max_new_tokens)

  def forward(self, params, batch, cfg, rng=None, train=False, loss_on=None, mutable=False):
    return objective.forward(params, batch, cfg, rng, train, loss_on, mutable)

  def forward_hidden(self, params, batch, cfg, rng=None, train=False, loss_on=None):
    return objective.forward_hidden(params, batch, cfg, loss_on)


FAMILY = LlamaFamily()
