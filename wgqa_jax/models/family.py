"""Model families: what the rest of the package asks of a family, and the one registry.

A family is one folder (models/t5/, models/llama/) whose `__init__.py` defines `FAMILY`, an
instance of a `Family` subclass; `families()` below is the only place that lists them. Nothing
outside a family's folder and this module names a family: code that needs a family asks a
model config for it (`family_of(cfg)`) and calls what the family provides. docs/families.md
lists exactly what a new family must provide.

Every family's model config (a frozen dataclass, models.config_file.ConfigFile) provides the
same fields and methods, which the grouping, storage, decoding and training code read:

  family                 the family's name, a class attribute ("t5", "llama"; saved in
                         wgqa_config.json)
  num_heads, width       query heads of every attention module; the width of the K/V inputs
  head_dim               dims of each attention head
  vocab_size, pad_token_id, eos_token_id
  grouping               the models' one Grouping section (wgqa_jax.grouping.variants)
  dtype, param_dtype, dropout_rate, remat, scan_layers, transpose_weight_grad_on_cpu
  rotary_keys            keys rotated by position (a merge's maps on keys must commute with it)
  attention_modules()    (param path, grouped) of every attention module, in the model's order
  cached_modules()       the grouped attention modules that hold a decode cache
  grouping_at(path), kv_heads_at(path), reorderable_heads(path)
  replace(**changes), save(path), to_dict(), from_dict(d), from_hf(hf dict), to_hf(form)
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from wgqa_jax.core.errors import UserError

# a saved config without a "family" key, and a HF config.json without a model_type, were
# written when T5 was the only family
LEGACY_FAMILY = "t5"


class Decoder(NamedTuple):
  """What a family hands the search loops (wgqa_jax.decoding.search), for `rows` = inputs x
  copies rows (the copies of an input adjacent: its beams, or its num_return_sequences
  samples)."""

  step: Callable  # (tokens (rows,), i, cache) -> (logits (rows, V) float32, cache): token i
  cache: Any  # the KV cache, prompt or encoder output already in it
  first: Any  # (rows,) the token fed at i = 0 (T5's start token, a prompt's last token)
  prefix: Any  # the decoder ids before the generated ones, for the logits processors: a
  # start id (int) or (rows, P) prompt ids
  reorder: Callable  # (cache, rows) -> the cache whose row r is the old row rows[r]


class HFRow(NamedTuple):
  """One row of a family's Hugging Face key table (wgqa_jax.store.hf reads and writes by it).
  layout: how a PyTorch [out, in] tensor becomes our param and back: same | T | heads_in
  ([H*dk, d] -> (d, H, dk)) | heads_out ([d, H*dk] -> (H, dk, d))."""

  path: tuple[str, ...]  # our param path
  key: str  # HF state-dict key
  layout: str
  aliases: tuple[str, ...] = ()


class Family(abc.ABC):
  """What a model family provides. Attributes first, then the model, its HF form, decoding and
  the training objective."""

  name: str  # cfg.family, the key in saved configs
  config_class: type  # its model config dataclass
  presets: dict[str, dict]  # architecture presets (names unique across families)
  hf_model_types: tuple[str, ...]  # config.json model_type values this family reads
  title: str  # for messages: "T5", "Llama"
  description: str  # ... and its kind: "T5 (encoder-decoder)", "decoder-only"
  # the data objectives (wgqa_jax.data.text_rows) its models train on, and the values of
  # optim.loss_on it takes (none: it always trains on its targets)
  objectives: tuple[str, ...]
  loss_on: tuple[str, ...] = ()
  eval_loss_on: str | None = None  # what eval/loss measures, as loss_on
  # its Hugging Face form: the config.json forms it exports (wgqa_jax.store.hf; "hf", the
  # transformers class, first), and the name engines read its sentencepiece vocabulary under
  hf_forms: tuple[str, ...] = ("hf",)
  spm_file: str = "tokenizer.model"
  # an encoder reads the context and a decoder the continuation (T5); else one decoder reads
  # both (wgqa_jax.lab.harness scores them as lm-evaluation-harness's HF model does)
  encoder_decoder: bool = False

  # ---- the model ----
  @abc.abstractmethod
  def init_params(self, cfg, rng) -> dict:
    """Random params in the per-layer layout (whatever cfg.scan_layers says)."""

  @abc.abstractmethod
  def param_shapes(self, cfg) -> dict:
    """ShapeDtypeStructs of every param, nothing allocated."""

  @abc.abstractmethod
  def param_axes(self, cfg) -> dict:
    """The logical axis names of every param, a tree of PartitionSpecs."""

  def for_tokenizer(self, cfg, tokenizer):
    """A random init's config with the tokenizer's special ids where the family takes them."""
    return cfg

  # ---- Hugging Face ----
  @abc.abstractmethod
  def hf_table(self, cfg) -> Iterator[HFRow]:
    """Our param paths <-> HF state-dict keys, one row per param, for a config HF can hold."""

  @abc.abstractmethod
  def config_from_hf(self, hf: dict, weights=None):
    """The model config of a HF config.json dict; `weights` (the checkpoint's state dict, when
    open) may have the last word where the config is ambiguous."""

  @abc.abstractmethod
  def hf_holds(self, cfg) -> bool:
    """Whether HF's architecture holds cfg's grouping as it is."""

  def hf_state_dict(self, params, cfg, form: str, tensors: dict) -> dict:
    """The HF state dict of form `form` from the key table's `tensors`: a form whose tensors
    the table does not map one to one (Llama's deepseek) completes it here."""
    return tensors

  @abc.abstractmethod
  def exportable(self, params, cfg, form: str = "hf"):
    """(params, cfg) in a grouping HF form `form` (one of hf_forms) holds; a one-line UserError
    where there is none. `cfg.to_hf(form)` is then its config.json."""

  def context_length(self, cfg) -> int:
    """The longest context it takes (the harness truncates longer ones from the left): a
    decoder-only model's max_position_embeddings, what HF's config says of it too."""
    return cfg.max_position_embeddings

  def serving_form(self, cfg) -> str:
    """The HF form (one of hf_forms) that serving engines' converters read cfg's model in
    (wgqa_jax.store.gguf): the form that holds it as it is and that they compute right."""
    return "hf"

  # ---- decoding (wgqa_jax.decoding) ----
  @abc.abstractmethod
  def begin_decoding(
    self, params, cfg, inputs, attention_mask, copies: int, max_new_tokens: int
  ) -> Decoder:
    """The Decoder of `copies` rows per input: the prompt or encoder output in its cache."""

  @abc.abstractmethod
  def cache_bytes(self, cfg, batch: int, prompt_len: int, max_new_tokens: int) -> int:
    """Bytes of a decode cache of `batch` rows."""

  # ---- training ----
  @abc.abstractmethod
  def forward(
    self,
    params,
    batch,
    cfg,
    rng=None,
    train: bool = False,
    loss_on: str | None = None,
    mutable=False,
  ):
    """(logits, labels, label weights) of a batch of pipeline rows, aligned so that position t
    predicts label t; with `mutable` (collection names) also the variables modules sowed."""

  def forward_hidden(self, params, batch, cfg, rng=None, train: bool = False, loss_on=None):
    """(final hidden states (b, t, d), head, labels, label weights): `forward` with the output
    projection left to `head(hidden chunk) -> logits chunk`, so that the training loss can
    hold the logits of one chunk of positions at a time (training.objectives.loss_sums).
    None: the family has no such split (its logits are small: T5's targets)."""
    return None


def families() -> dict[str, Family]:
  """The registry: every model family, by name."""
  from wgqa_jax.models import llama, t5

  return {f.name: f for f in (t5.FAMILY, llama.FAMILY)}


def get(name: str) -> Family:
  found = families().get(name)
  if found is None:
    raise UserError(f"unknown model family {name!r} (known: {sorted(families())})")
  return found


def family_of(cfg) -> Family:
  """The family of a model config."""
  return get(cfg.family)


def config_from_dict(d: dict[str, Any]):
  """A model config from its saved dict: `family` names it."""
  return get(d.get("family", LEGACY_FAMILY)).config_class.from_dict(
    {k: v for k, v in d.items() if k != "family"}
  )


def config_from_hf(hf: dict[str, Any], weights=None):
  """A model config from a HF config.json dict, by its model_type."""
  if not isinstance(hf, dict):
    raise UserError(f"config.json holds a JSON {type(hf).__name__}, not an object")
  kind = hf.get("model_type")
  by_type = {t: f for f in families().values() for t in f.hf_model_types}
  if kind is not None and kind not in by_type:
    raise UserError(
      f"model_type={kind!r} is not a family wgqa_jax has: {list(by_type)} "
      f"({', '.join(f.description for f in families().values())})"
    )
  family = by_type[kind] if kind is not None else get(LEGACY_FAMILY)
  try:
    return family.config_from_hf(hf, weights)
  except KeyError as e:
    raise UserError(
      f"config.json has no {e.args[0]!r}, which a {family.title} config needs"
      + ("" if kind else f" (and no model_type: read as {family.description})")
    ) from None


def presets() -> dict[str, type]:
  """Every architecture preset name -> its config class."""
  return {name: f.config_class for f in families().values() for name in f.presets}


def preset(name: str, **overrides):
  """The model config of architecture preset `name` (any family), `overrides` applied."""
  for f in families().values():
    if name in f.presets:
      return f.config_class(**{**f.presets[name], **overrides})
  raise UserError(f"unknown architecture preset {name!r}; known: {sorted(presets())}")
