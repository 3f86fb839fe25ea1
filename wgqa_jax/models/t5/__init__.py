"""The T5 family: Flax T5 encoder-decoder, v1.0 (relu, tied) and v1.1 / flan (gated-gelu,
untied).

  config.py     T5Config (one nested `grouping` section) and the architecture presets
  model.py      the Flax modules, init_params / param_shapes / param_axes
  hf_table.py   our params <-> HF T5ForConditionalGeneration keys
  decoding.py   the adapter to the search loops (encoder once, cross K/V cached once per input)
  objective.py  the training loss inputs (targets given inputs)
"""

from __future__ import annotations

import numpy as np

from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping import variants
from wgqa_jax.models.family import Family
from wgqa_jax.models.t5 import decoding, hf_table, model, objective
from wgqa_jax.models.t5.config import PRESETS, T5Config, preset
from wgqa_jax.models.t5.model import T5, init_params, param_axes, param_shapes, shift_right

__all__ = [
  "FAMILY",
  "PRESETS",
  "T5",
  "T5Config",
  "init_params",
  "param_axes",
  "param_shapes",
  "preset",
  "shift_right",
]


class T5Family(Family):
  name = "t5"
  config_class = T5Config
  presets = PRESETS
  hf_model_types = ("t5", "mt5")
  title = "T5"
  description = "T5 (encoder-decoder)"
  objectives = ("pairs", "span_corruption")
  hf_forms = ("hf", "untied")  # untied: a tied head written out, for llama.cpp (exportable)
  spm_file = "spiece.model"
  encoder_decoder = True

  def init_params(self, cfg, rng):
    return model.init_params(cfg, rng)

  def param_shapes(self, cfg):
    return model.param_shapes(cfg)

  def param_axes(self, cfg):
    return model.param_axes(cfg)

  def hf_table(self, cfg):
    return hf_table.table(cfg)

  def config_from_hf(self, hf, weights=None):
    """transformers >= 5 writes tie_word_embeddings=true even for an untied v1.1 model and saves
    lm_head.weight only when it differs from the embedding, so the weights, not the config, say
    whether the output projection is shared."""
    cfg = T5Config.from_hf(hf)
    head = weights.get("lm_head.weight") if weights is not None else None
    shared = weights.get("shared.weight") if weights is not None else None
    if (
      cfg.tie_word_embeddings
      and head is not None
      and shared is not None
      and not np.array_equal(np.asarray(head), np.asarray(shared))
    ):
      cfg = cfg.replace(tie_word_embeddings=False, scale_decoder_outputs=cfg.scales_decoder_outputs)
    return cfg

  def hf_holds(self, cfg):
    return variants.is_mha(cfg)  # HF T5 has MHA heads only

  def exportable(self, params, cfg, form="hf"):
    """KV heads expanded to MHA; in the "untied" form the head is an untied lm_head with the
    d_model**-0.5 output scaling folded in (a tied head written out): the same function, for
    engines that neither tie nor scale (llama.cpp's t5 graph scales no head's input)."""
    if cfg.grouping.latent:
      raise UserError(
        "a T5 with MLA (latent attention) stays in our format: no Hugging Face or llama.cpp T5 "
        "caches a latent (save it with --out; our decoding serves it)"
      )
    params, cfg = variants.expand_to_mha(params, cfg)
    if form == "untied" and (cfg.tie_word_embeddings or cfg.scales_decoder_outputs):
      scale = np.float32(cfg.d_model**-0.5 if cfg.scales_decoder_outputs else 1.0)
      head = params["shared"]["embedding"].T if cfg.tie_word_embeddings else params["lm_head"]
      params = {**params, "lm_head": np.asarray(head, np.float32) * scale}
      cfg = cfg.replace(tie_word_embeddings=False, scale_decoder_outputs=False)
    return params, cfg

  def context_length(self, cfg):
    """Relative positions set no limit; T5 was trained on 512 input tokens (t5-small's
    tokenizer says so too, model_max_length, which the harness's HF model reads)."""
    return 512

  def serving_form(self, cfg):
    return "untied"

  def begin_decoding(self, params, cfg, inputs, attention_mask, copies, max_new_tokens):
    return decoding.begin(params, cfg, inputs, attention_mask, copies, max_new_tokens)

  def cache_bytes(self, cfg, batch, prompt_len, max_new_tokens):
    return decoding.cache_bytes(cfg, batch, prompt_len, max_new_tokens)

  def forward(self, params, batch, cfg, rng=None, train=False, loss_on=None, mutable=False):
    return objective.forward(params, batch, cfg, rng, train, loss_on, mutable)


FAMILY = T5Family()
