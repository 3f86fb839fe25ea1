"""The grouping variants: each one a typed object that owns what makes it different.

A model config holds one `Grouping` (how its grouped attention modules share K/V heads); a
`Variant` is how an MHA checkpoint becomes such a model and what it does while uptraining:

    params, cfg = variants.from_mha(params, cfg, "wgqa", kv_heads=4)   # MHA -> WGQA (G=4)
    params, cfg = variants.fold(params, cfg)                           # WGQA -> plain GQA
    params, cfg = variants.expand_to_mha(params, cfg)                  # GQA -> MHA, same outputs

| variant            | G          | K/V of each group from the MHA heads         | while training |
|--------------------|------------|----------------------------------------------|----------------|
| mha                | H          | unchanged                                    |                |
| mqa                | 1          | mean of all heads                            |                |
| gqa                | kv_heads   | mean of H/G contiguous heads                 |                |
| wgqa, randwgqa     | kv_heads   | sum_i w_i K_i, w init 0.5 / N(0, 1) per head | w learned      |
| colwgqa, colrand.. | kv_heads   | same, one weight per head and d_kv column    | w learned      |
| simgqa             | kv_heads   | mean over groups of similar query heads      | may regroup    |
| asymgqa            | len(sizes) | mean over contiguous groups of unequal sizes |                |
| kdgqa, dgqa        | kv_heads   | mean (GQA); queries allocated by key norms   |                |
| pgqa               | kv_heads   | mean (GQA)                                   | logit noise    |
| aligned            | kv_heads   | mean after rotating heads toward their group |                |
| svd                | kv_heads   | top principal subspace of the group's heads  |                |
| search             | kv_heads   | svd, over groups searched to keep heads best |                |

aligned, svd and search are calibrated: they read the MHA model's K/V input statistics
(wgqa_jax.training.calibration) and absorb each head's map into its q / o kernels
(wgqa_jax.grouping.calibrated_merge); the result is plain GQA.

Which attention modules are grouped is the model family's knowledge (`cfg.attention_modules()`:
T5 groups decoder self- and cross-attention, and the encoder with `group_encoder`); everything
here works on any family whose config provides that and a `grouping` field.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping import calibrated_merge, kv_merge, latent_merge

WEIGHT_MODES = ("none", "row", "col")
WEIGHT_INITS = ("constant", "normal")
ALLOCATIONS = ("static", "key_norm", "kernel_norm")


# ----------------------------------------------------------------------------------------------
# Grouping: the one section of a model config that describes grouped attention
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Grouping:
  """How grouped attention modules share K/V heads. `Grouping()` is plain MHA."""

  # G, the KV heads of every grouped module. None = one per query head (MHA); 1 = MQA.
  kv_heads: int | None = None
  # Also group the encoder's self-attention (encoder-decoder families; the papers do not).
  group_encoder: bool = False
  # WGQA keeps all H original K/V kernels and learns one weight per head ("row") or per head and
  # d_kv column ("col"); the G grouped kernels are weighted sums over each group's heads.
  weights: str = "none"
  weights_init: str = "constant"  # "constant" (weights_init_value) | "normal" (RandWGQA)
  weights_init_value: float = 0.5
  # AsymGQA: contiguous group sizes, one per KV head, summing to the number of query heads.
  group_sizes: tuple[int, ...] | None = None
  # How query heads find their KV head: "static" (contiguous), "key_norm" (KDGQA: from the norms
  # of each forward pass's keys) or "kernel_norm" (DGQA: from the K kernels' norms).
  allocation: str = "static"
  # PGQA: std of Gaussian noise subtracted from the attention logits while training.
  attention_noise: float = 0.0
  # A KV budget allocated across modules: (module path "decoder/layers_0/self_attention", G)
  # pairs, each module's own G; the modules not named have kv_heads. Static equal groups only.
  module_kv_heads: tuple[tuple[str, int], ...] | None = None
  # MLA (multi-head latent attention): each grouped module caches one latent of this rank per
  # token, plus `rope_heads` shared rotary key heads where keys are rotary (Llama), instead of
  # K/V heads; its H heads read keys and values up-projected from the latent (models.attention).
  # None: grouped K/V heads.
  latent_rank: int | None = None
  rope_heads: int = 1
  # MLA with a KV budget allocated across modules: (module path, rank) pairs, each module's own.
  module_latent_rank: tuple[tuple[str, int], ...] | None = None

  def __post_init__(self):
    if self.group_sizes is not None:  # lists from JSON become tuples (hashable: jit-static)
      object.__setattr__(self, "group_sizes", tuple(int(x) for x in self.group_sizes))
    for name in ("module_kv_heads", "module_latent_rank"):
      pairs = getattr(self, name)
      if pairs is None:
        continue
      pairs = pairs.items() if isinstance(pairs, dict) else pairs
      object.__setattr__(
        self,
        name,
        tuple(("/".join(p) if isinstance(p, (tuple, list)) else str(p), int(g)) for p, g in pairs),
      )

  def at(self, path: tuple[str, ...]) -> Grouping:
    """The grouping of the attention module at `path`: its own G (MLA: rank) when
    module_kv_heads (module_latent_rank) names it. What the module, its params and its decode
    cache are built from."""
    if self.module_kv_heads is None and self.module_latent_rank is None:
      return self
    key = "/".join(path)
    g = dict(self.module_kv_heads or ()).get(key, self.kv_heads)
    r = dict(self.module_latent_rank or ()).get(key, self.latent_rank)
    return dataclasses.replace(
      self, kv_heads=g, module_kv_heads=None, latent_rank=r, module_latent_rank=None
    )

  @property
  def per_module(self) -> bool:
    """Some module has its own G or latent rank (a KV budget allocated across modules)."""
    return (
      bool(self.module_kv_heads) and any(g != self.kv_heads for _, g in self.module_kv_heads)
    ) or (
      bool(self.module_latent_rank)
      and any(r != self.latent_rank for _, r in self.module_latent_rank)
    )

  @property
  def latent(self) -> bool:
    """The grouped modules are MLA: they cache a latent, not K/V heads."""
    return self.latent_rank is not None or bool(self.module_latent_rank)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Grouping:
    """From a saved config's grouping section (files written before the rename say `noise`)."""
    d = dict(d)
    if "noise" in d:
      d["attention_noise"] = d.pop("noise")
    return cls(**d)

  def num_kv_heads(self, num_heads: int) -> int:
    return num_heads if self.kv_heads is None else self.kv_heads

  @property
  def unequal(self) -> bool:
    """Query heads are not split evenly and statically: they are gathered per KV head."""
    return self.group_sizes is not None or self.allocation != "static"

  def validate(self, num_heads: int) -> None:
    def bad(msg):
      raise UserError(f"grouping: {msg}")

    g = self.num_kv_heads(num_heads)
    if not isinstance(g, int) or g <= 0:
      bad(f"kv_heads must be a positive int or None, got {self.kv_heads!r}")
    if self.weights not in WEIGHT_MODES:
      bad(f"weights must be one of {WEIGHT_MODES}, got {self.weights!r}")
    if self.weights_init not in WEIGHT_INITS:
      bad(f"weights_init must be one of {WEIGHT_INITS}, got {self.weights_init!r}")
    if self.allocation not in ALLOCATIONS:
      bad(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
    if self.group_sizes is not None:
      s = self.group_sizes
      if len(s) != g or sum(s) != num_heads or min(s) < 1:
        bad(f"group_sizes={list(s)} must be {g} positive sizes summing to num_heads={num_heads}")
      if self.allocation != "static":
        bad("group_sizes are static; key-norm allocation sizes the groups itself")
    elif self.allocation == "static" and num_heads % g:
      bad(
        f"num_heads={num_heads} is not divisible by kv_heads={g}; valid choices: "
        f"{[d for d in range(1, num_heads + 1) if num_heads % d == 0]}"
      )
    if self.allocation != "static" and self.weights != "none":
      bad("WGQA weights assume static contiguous groups; use allocation='static'")
    if self.attention_noise < 0:
      bad(f"attention_noise must be >= 0, got {self.attention_noise}")
    for path, gm in self.module_kv_heads or ():
      if gm <= 0 or num_heads % gm:
        bad(f"module {path} has {gm} KV heads, which do not divide num_heads={num_heads}")
    if self.per_module and self.unequal:
      bad("per-module KV heads take static, equal, contiguous groups")
    if self.latent:
      for path, r in ((None, self.latent_rank), *(self.module_latent_rank or ())):
        if r is not None and (not isinstance(r, int) or r <= 0):
          where = f"module {path}" if path else "latent_rank"
          bad(f"{where}: a latent rank must be a positive int, got {r!r}")
      if not 1 <= self.rope_heads <= num_heads:
        bad(f"rope_heads must be 1..num_heads={num_heads}, got {self.rope_heads}")
      if g != num_heads or self.weights != "none" or self.unequal or self.module_kv_heads:
        bad("MLA (latent_rank) has one K/V head per query head: no KV groups, weights or sizes")

  def kv_index(self, num_heads: int) -> np.ndarray:
    """(H,) KV head of each query head under static allocation."""
    return kv_merge.kv_index(num_heads, self.num_kv_heads(num_heads), self.group_sizes)

  def replace(self, **changes) -> Grouping:
    return dataclasses.replace(self, **changes)

  def describe(self, num_heads: int) -> str:
    parts = [f"{num_heads} heads, {self.num_kv_heads(num_heads)} KV heads"]
    if self.per_module and self.module_kv_heads:
      heads = [g for _, g in self.module_kv_heads]
      parts[0] = (
        f"{num_heads} heads, KV heads per module {','.join(map(str, heads))} ({sum(heads)} in all)"
      )
    if self.weights != "none":
      parts.append(f"WGQA {self.weights} weights")
    if self.group_sizes:
      parts.append(f"group sizes {list(self.group_sizes)}")
    if self.allocation != "static":
      parts.append(f"{self.allocation} allocation")
    if self.attention_noise:
      parts.append(f"logit noise {self.attention_noise}")
    if self.latent:
      ranks = [r for _, r in self.module_latent_rank or ()] or [self.latent_rank]
      rank = ",".join(map(str, ranks)) if len(set(ranks)) > 1 else str(ranks[0])
      parts[0] = f"{num_heads} heads, MLA latent rank {rank}"
    if self.group_encoder:
      parts.append("encoder grouped")
    return ", ".join(parts)


MHA = Grouping()

# The grouping options a run's config section (and convert's flags) give every variant function,
# by the names those functions take: `options(c.grouping)` is the one place they are read.
OPTIONS = ("group_encoder", "group_sizes", "attention_noise")


def options(section) -> dict[str, Any]:
  """The grouping options set in a config section (a mapping; unset or missing keys left out),
  as keyword arguments of Variant.grouping, from_mha, converter and grouped_config."""
  return {k: section.get(k) for k in OPTIONS if section.get(k) is not None}


# ----------------------------------------------------------------------------------------------
# Variants: how MHA becomes each one
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
  """GQA (Ainslie et al. 2023): K/V of each group = mean of its contiguous MHA heads. The
  subclasses below change one step each."""

  name: str

  def kv_heads(self, num_heads: int, requested: int | None, group_sizes) -> int:
    if requested is None:
      raise UserError(f"variant {self.name!r} needs kv_heads (the number of groups G)")
    return requested

  def check(
    self,
    *,
    group_encoder: bool = False,
    group_sizes=None,
    attention_noise: float | None = None,
    regroup_every: int = 0,
  ):
    """Options this variant does not take are errors, raised before any work is done (every
    variant may group the encoder)."""
    if group_sizes:
      raise UserError(f"group_sizes only apply to asymgqa, not {self.name!r}")
    if attention_noise is not None:
      raise UserError(f"attention noise only applies to pgqa, not {self.name!r}")
    if regroup_every and not self.regroups:
      raise UserError(f"{self.name!r} does not regroup during training (simgqa does)")

  def grouping(
    self,
    num_heads: int,
    kv_heads: int | None = None,
    *,
    group_encoder=False,
    group_sizes=None,
    attention_noise: float | None = None,
  ) -> Grouping:
    """The model config's grouping section for this variant (validated)."""
    self.check(group_sizes=group_sizes, attention_noise=attention_noise)
    g = self.kv_heads(num_heads, kv_heads, group_sizes)
    out = self._grouping(g, group_encoder, group_sizes, attention_noise)
    out.validate(num_heads)
    return out

  def _grouping(self, g: int, group_encoder: bool, group_sizes, attention_noise) -> Grouping:
    return Grouping(kv_heads=g, group_encoder=group_encoder)

  def configure(self, grouping: Grouping, cfg) -> Grouping:
    """The grouping section as this variant sets it for a model config `cfg` (MLA sizes its
    latent from the head size)."""
    return grouping

  def convert_module(self, module: dict, grouping: Grouping, rng, calibration=None) -> dict:
    """One attention module's MHA params {q, k, v, o} -> this variant's. calibration: the
    module's calibrated_merge.ModuleInputs, for calibrated variants."""
    g = grouping.kv_heads
    return {
      **module,
      "k": kv_merge.mean_pool(np.asarray(module["k"]), g, grouping.group_sizes),
      "v": kv_merge.mean_pool(np.asarray(module["v"]), g, grouping.group_sizes),
    }

  calibrated = False  # needs the MHA model's calibration statistics (training.calibration)
  # the merge whose calibration error (calibrated_merge.proxy_error) scores this variant's
  # conversion, None where it has none (learned weights, run-time groups)
  proxy_merge = "mean"
  budgeted = True  # takes a KV budget (kv_heads); False: it fixes its own G
  aliases: tuple[str, ...] = ()  # other names get() knows it by

  # ---- training hooks ----
  regroups = False  # SimGQA: the train loop calls regroup() every `regroup_every` steps
  packs = True  # whether examples may share a row (data.pack): heads chosen per example

  def regroup(self, state, cfg):
    return state


@dataclasses.dataclass(frozen=True)
class MHAVariant(Variant):
  """Every query head keeps its own K/V head: the conversion is the identity."""

  budgeted = False

  def kv_heads(self, num_heads, requested, group_sizes):
    return num_heads

  def _grouping(self, g, group_encoder, group_sizes, attention_noise):
    return Grouping(group_encoder=group_encoder)

  def convert_module(self, module, grouping, rng, calibration=None):
    return module


@dataclasses.dataclass(frozen=True)
class MQA(Variant):
  """One K/V head for all queries (Shazeer 2019): the mean of every head."""

  budgeted = False

  def kv_heads(self, num_heads, requested, group_sizes):
    return 1


@dataclasses.dataclass(frozen=True)
class WGQA(Variant):
  """WGQA (Chinnakonduru & Mohapatra 2024): learnable weights over each group's heads; as in the
  seed repository the weighted heads are *summed*, so 0.5 with two heads a group starts at GQA."""

  mode: str = "row"  # "row": one weight per head; "col": per head and d_kv column
  init: str = "constant"  # "constant" 0.5 (WGQA) | "normal" N(0, 1) (RandWGQA)
  proxy_merge = None

  def _grouping(self, g, group_encoder, group_sizes, attention_noise):
    return Grouping(
      kv_heads=g, group_encoder=group_encoder, weights=self.mode, weights_init=self.init
    )

  def convert_module(self, module, grouping, rng, calibration=None):
    h, dk = np.shape(module["k"])[1:]
    w = lambda: kv_merge.wgqa_init_weights(
      self.mode, h, dk, self.init, grouping.weights_init_value, rng
    )
    return {**module, "wk": w(), "wv": w()}  # all H K/V kernels stay, and stay trainable


@dataclasses.dataclass(frozen=True)
class SimGQA(Variant):
  """SimGQA: heads with similar query kernels are made neighbours, then pooled. Exact for
  cross-attention; in self-attention the stack's shared relative-position table stays in place
  (as in the seed repository), so a moved head reads another head's bias row."""

  regroups = True
  proxy_merge = None

  def convert_module(self, module, grouping, rng, calibration=None):
    groups = kv_merge.similarity_groups(module["q"], grouping.kv_heads)
    module = kv_merge.permute_heads(module, [h for grp in groups for h in grp])
    return super().convert_module(module, grouping, rng)

  def regroup(self, state, cfg):
    """Move query heads between the (already pooled) KV groups so that each group holds
    mutually similar queries; q and o (and their optimizer moments, any leaf of the same path)
    move together. Each similarity group goes to the KV head most of its members already use.
    `state` is on the host; returns a new host state."""
    g = cfg.grouping.kv_heads
    size = cfg.num_heads // g
    flat, perms = traverse_util.flatten_dict(state["params"]), {}
    for path in grouped_paths(cfg):
      groups = kv_merge.similarity_groups(flat[path + ("q",)], g)
      slots, order = list(range(g)), [None] * g
      for grp in sorted(groups, key=lambda gr: -max(np.bincount(np.array(gr) // size))):
        votes = np.bincount(np.array(grp) // size, minlength=g)
        slot = max(slots, key=lambda j: (votes[j], -j))
        slots.remove(slot)
        order[slot] = grp
      perms[path] = np.array([h for grp in order for h in grp])

    def visit(path, leaf):
      keys = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
      perm = perms.get(keys[-4:-1]) if len(keys) >= 4 else None
      if perm is None or keys[-1] not in ("q", "o") or np.ndim(leaf) != 3:
        return leaf
      return np.take(leaf, perm, axis=1 if keys[-1] == "q" else 0)

    return jax.tree_util.tree_map_with_path(visit, state)


@dataclasses.dataclass(frozen=True)
class AsymGQA(Variant):
  """Contiguous groups of unequal sizes (group_sizes), each K/V the mean of its group."""

  budgeted = False
  proxy_merge = None

  def kv_heads(self, num_heads, requested, group_sizes):
    if not group_sizes:
      raise UserError("asymgqa needs group_sizes, e.g. (3, 1, 2, 2)")
    return len(group_sizes)

  def check(self, *, group_encoder=False, group_sizes=None, attention_noise=None, regroup_every=0):
    super().check(attention_noise=attention_noise, regroup_every=regroup_every)
    self.kv_heads(0, None, group_sizes)

  def _grouping(self, g, group_encoder, group_sizes, attention_noise):
    return Grouping(kv_heads=g, group_encoder=group_encoder, group_sizes=tuple(group_sizes))


@dataclasses.dataclass(frozen=True)
class KeyNormGQA(Variant):
  """KDGQA / DGQA: GQA pooling; each KV head gets a number of query heads in proportion to the
  norm of its keys (KDGQA, per forward pass) or of its K kernel (DGQA)."""

  allocation: str = "key_norm"
  proxy_merge = None

  @property
  def packs(self) -> bool:  # KDGQA allocates heads from a whole row's keys
    return self.allocation != "key_norm"

  def _grouping(self, g, group_encoder, group_sizes, attention_noise):
    return Grouping(kv_heads=g, group_encoder=group_encoder, allocation=self.allocation)


@dataclasses.dataclass(frozen=True)
class PGQA(Variant):
  """PGQA: GQA with Gaussian noise subtracted from the grouped modules' attention logits while
  training (std `attention_noise`, 0.1 unless given)."""

  default_noise: float = 0.1

  def check(self, *, group_encoder=False, group_sizes=None, attention_noise=None, regroup_every=0):
    super().check(group_sizes=group_sizes, regroup_every=regroup_every)

  def _grouping(self, g, group_encoder, group_sizes, attention_noise):
    noise = self.default_noise if attention_noise is None else attention_noise
    return Grouping(kv_heads=g, group_encoder=group_encoder, attention_noise=noise)


@dataclasses.dataclass(frozen=True)
class CalibratedGQA(Variant):
  """GQA whose grouped heads come from what the MHA heads compute on calibration data:
  "aligned" (rotate each head toward its group, then mean-pool), "svd" (the group's top
  principal subspace) or "search" (svd over searched groups), the maps absorbed into q and o
  (wgqa_jax.grouping.calibrated_merge)."""

  method: str = "svd"
  calibrated = True

  @property
  def proxy_merge(self) -> str:
    return self.method

  def convert_module(self, module, grouping, rng, calibration=None):
    if calibration is None:
      raise UserError(f"{self.name!r} needs calibration statistics of the MHA model")
    return calibrated_merge.merge(
      self.method,
      module,
      calibration.gram,
      grouping.kv_index(np.shape(module["q"])[1]),
      calibration.rotary,
      calibration.reorderable,
    )


@dataclasses.dataclass(frozen=True)
class LatentAttention(Variant):
  """MLA (DeepSeek-V2): every grouped module caches one low-rank latent per token (plus a
  shared rotary key head where keys are rotary) from which its H heads' keys and values are
  up-projected. kv_heads=G asks for the KV bytes of G heads: rank 2 G d_kv, less the rotary
  key's d_kv. Converted from the calibration statistics (wgqa_jax.grouping.latent_merge)."""

  calibrated = True
  proxy_merge = None  # its calibration error is latent_merge.proxy_errors, by rank
  rope_heads: int = 1

  def configure(self, grouping: Grouping, cfg) -> Grouping:
    g = grouping.kv_heads
    rope = self.rope_heads * cfg.head_dim if cfg.rotary_keys else 0
    rank = 2 * g * cfg.head_dim - rope
    if rank <= 0:
      raise UserError(f"mla: the KV bytes of {g} heads leave no latent beside the rotary key")
    rank = min(rank, 2 * cfg.num_heads * cfg.head_dim)
    return grouping.replace(kv_heads=None, latent_rank=rank, rope_heads=self.rope_heads)

  def convert_module(self, module, grouping, rng, calibration=None):
    if calibration is None:
      raise UserError(f"{self.name!r} needs calibration statistics of the MHA model")
    return latent_merge.to_latent(
      module, calibration.gram, grouping.latent_rank, calibration.rotary, grouping.rope_heads
    )


VARIANTS: dict[str, Variant] = {
  v.name: v
  for v in (
    MHAVariant("mha"),
    MQA("mqa"),
    Variant("gqa", aliases=("mean",)),
    WGQA("wgqa"),
    WGQA("randwgqa", init="normal"),
    WGQA("colwgqa", mode="col"),
    WGQA("colrandwgqa", mode="col", init="normal"),
    SimGQA("simgqa"),
    AsymGQA("asymgqa"),
    KeyNormGQA("kdgqa", allocation="key_norm"),
    KeyNormGQA("dgqa", allocation="kernel_norm"),
    PGQA("pgqa"),
    CalibratedGQA("aligned", method="aligned"),
    CalibratedGQA("svd", method="svd"),
    CalibratedGQA("search", method="search"),
    LatentAttention("mla"),
  )
}


ALIASES = {alias: v for v in VARIANTS.values() for alias in v.aliases}


def get(name: str) -> Variant:
  """The variant called `name` (or one of its aliases); an unknown name fails with the closest
  known one."""
  if name not in VARIANTS and name not in ALIASES:
    close = difflib.get_close_matches(name, [*VARIANTS, *ALIASES], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"unknown variant {name!r}{hint}; choose from {sorted(VARIANTS)}")
  return VARIANTS.get(name) or ALIASES[name]


# ----------------------------------------------------------------------------------------------
# Param-tree surgery
# ----------------------------------------------------------------------------------------------
def grouped_paths(cfg) -> list[tuple[str, ...]]:
  """Param paths of the attention modules that cfg.grouping applies to."""
  return [path for path, grouped in cfg.attention_modules() if grouped]


def map_modules(params, paths: Iterable[tuple[str, ...]], fn: Callable[[dict, tuple], dict]):
  """A new params tree in which the module at each path is replaced by fn(module dict, path)."""
  flat = traverse_util.flatten_dict(params)
  for path in paths:
    n = len(path)
    module = {k[n]: flat.pop(k) for k in [k for k in flat if k[:n] == path]}
    flat.update({path + (name,): v for name, v in fn(module, path).items()})
  return traverse_util.unflatten_dict(flat)


def is_mha(cfg) -> bool:
  return (
    cfg.grouping.kv_heads in (None, cfg.num_heads)
    and cfg.grouping.weights == "none"
    and not cfg.grouping.unequal
    and not cfg.grouping.per_module
    and not cfg.grouping.latent
  )


def from_mha(
  params,
  cfg,
  variant: str,
  kv_heads: int | None = None,
  *,
  group_encoder: bool = False,
  group_sizes=None,
  attention_noise: float | None = None,
  seed: int = 0,
  calibration=None,
  module_kv_heads=None,
):
  """MHA params -> `variant` with G = kv_heads groups. Returns (params, cfg).

  group_sizes: AsymGQA's contiguous group sizes. attention_noise: PGQA's logit noise std
  (default 0.1). seed: RandWGQA's weight init. calibration: the MHA model's calibration
  statistics (wgqa_jax.training.calibration.Statistics), which calibrated variants (aligned, svd,
  search) need. module_kv_heads: {module path: G} of modules with their own G (a KV budget
  allocated across modules, wgqa_jax.grouping.kv_budget)."""
  new_cfg, convert = converter(
    cfg,
    variant,
    kv_heads,
    group_encoder=group_encoder,
    group_sizes=group_sizes,
    attention_noise=attention_noise,
    seed=seed,
    calibration=calibration,
    module_kv_heads=module_kv_heads,
  )
  return map_modules(params, grouped_paths(new_cfg), convert), new_cfg


def converter(
  cfg,
  variant: str,
  kv_heads: int | None = None,
  *,
  group_encoder: bool = False,
  group_sizes=None,
  attention_noise: float | None = None,
  seed: int = 0,
  calibration=None,
  module_kv_heads=None,
):
  """(the variant's config, convert): convert(module dict, its path) turns one grouped
  attention module's MHA params into the variant's. Called on grouped_paths(config) in order
  it gives what from_mha gives (RandWGQA draws its weights in that order); wgqa_jax.store.streaming
  converts a checkpoint so, one module at a time."""
  new_cfg = grouped_config(
    cfg,
    variant,
    kv_heads,
    group_encoder=group_encoder,
    group_sizes=group_sizes,
    attention_noise=attention_noise,
    module_kv_heads=module_kv_heads,
  )
  v, rng = get(variant), np.random.default_rng(seed)

  def convert(module, path):
    if v.calibrated and calibration is None:
      raise UserError(
        f"variant {variant!r} needs calibration statistics of the MHA model "
        f"(wgqa_jax.training.calibration; a training run collects them)"
      )
    inputs = (
      calibrated_merge.ModuleInputs(
        calibration.gram(path), cfg.rotary_keys, cfg.reorderable_heads(path)
      )
      if v.calibrated
      else None
    )
    return v.convert_module(module, new_cfg.grouping_at(path), rng, inputs)

  return new_cfg, convert


def grouped_config(
  cfg,
  variant: str,
  kv_heads: int | None = None,
  *,
  group_encoder=False,
  group_sizes=None,
  attention_noise: float | None = None,
  module_kv_heads=None,
):
  """The model config from_mha() gives, without any params (the planner sizes runs from it).
  module_kv_heads: {module path: G}, or for mla {module path: latent rank}."""
  if not is_mha(cfg):
    raise UserError(
      f"from_mha() needs MHA params; these have "
      f"{cfg.grouping.describe(cfg.num_heads)} (fold/expand them first)"
    )
  grouping = get(variant).grouping(
    cfg.num_heads,
    kv_heads,
    group_encoder=group_encoder,
    group_sizes=group_sizes,
    attention_noise=attention_noise,
  )
  grouping = get(variant).configure(grouping, cfg)
  if module_kv_heads:
    if not get(variant).budgeted or get(variant).regroups:
      raise UserError(f"{variant!r} takes no per-module KV heads")
    grouped = [
      path for path, is_grouped in cfg.replace(grouping=grouping).attention_modules() if is_grouped
    ]
    unknown = sorted(set(map(tuple, module_kv_heads)) - set(grouped))
    if unknown:
      raise UserError(
        f"module_kv_heads names {'/'.join(unknown[0])}, which is not a grouped "
        f"attention module of this model"
      )
    pairs = tuple(("/".join(p), int(module_kv_heads[p])) for p in grouped if p in module_kv_heads)
    grouping = grouping.replace(
      **({"module_latent_rank": pairs} if grouping.latent else {"module_kv_heads": pairs})
    )
    grouping.validate(cfg.num_heads)
  return cfg.replace(grouping=grouping)


def fold(params, cfg):
  """WGQA -> plain GQA: bake the learned weights into the grouped K/V kernels."""
  grp = cfg.grouping
  if grp.weights == "none":
    return params, cfg

  def fold_module(m, path):
    m, g = dict(m), cfg.kv_heads_at(path)
    for kernel, w in (("k", "wk"), ("v", "wv")):
      m[kernel] = kv_merge.weighted_sum(np.asarray(m[kernel]), np.asarray(m.pop(w)), g)
    return m

  return map_modules(params, grouped_paths(cfg), fold_module), cfg.replace(
    grouping=grp.replace(weights="none", weights_init="constant")
  )


def expand_to_mha(params, cfg):
  """GQA / MQA / AsymGQA (WGQA folded first) -> MHA params with identical outputs."""
  if cfg.grouping.latent:
    raise UserError("an MLA model has a latent, not K/V heads: it has no MHA form to expand to")
  params, cfg = fold(params, cfg)
  grp = cfg.grouping
  if grp.allocation != "static":
    raise UserError(
      f"allocation={grp.allocation!r} decides the grouping at run time; it has no "
      f"fixed MHA equivalent to export"
    )
  if is_mha(cfg):
    return params, cfg.replace(grouping=MHA.replace(group_encoder=grp.group_encoder))
  h = cfg.num_heads
  expand = lambda m, path: {
    name: kv_merge.expand(np.asarray(m[name]), h, grp.group_sizes)
    if name in ("k", "v") and np.shape(m[name])[1] != h
    else m[name]
    for name in m
  }
  return map_modules(params, grouped_paths(cfg), expand), cfg.replace(
    grouping=MHA.replace(group_encoder=grp.group_encoder)
  )


def weights_of(params) -> dict[tuple[str, ...], Any]:
  """Every WGQA weight leaf ({path: array}) of a params tree."""
  return {k: v for k, v in traverse_util.flatten_dict(params).items() if k[-1] in ("wk", "wv")}


def weights_flat(params) -> np.ndarray:
  """All WGQA weights of a params tree, flattened in path order (empty if it has none)."""
  leaves = [np.asarray(v).ravel() for _, v in sorted(weights_of(params).items())]
  return np.concatenate(leaves) if leaves else np.zeros(0, np.float32)
