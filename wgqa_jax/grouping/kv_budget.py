"""A KV-cache budget spread over attention modules where it buys most: per-module G.

Every cached attention module (Llama: each layer; T5: each decoder layer's self- and
cross-attention) stores 2 G d_kv numbers per token, so a budget of `kv_heads` heads per module
is a total of kv_heads x modules heads. `allocate` spends that total, module by module, on the
G (a divisor of H) that minimises the summed calibration error of the merge
(calibrated_merge.proxy_error): exactly, by dynamic programming over the heads used. Uniform G
is one of the allocations it weighs, so its error is never above uniform's.

    module_kv_heads = kv_budget.by_proxy(reader, cfg, stats, "svd", kv_heads=2)
    params, cfg = variants.from_mha(params, cfg, "svd", 2, calibration=stats,
                                    module_kv_heads=module_kv_heads)

MLA (variant "mla") spends the same bytes on latent ranks instead (`by_proxy` gives {module:
rank}): every module keeps its rotary key, and the ranks, in steps of d_kv / 2, minimise the summed
calibration error of the latent conversion (latent_merge.proxy_errors) under the total the uniform
rank would use.
"""

from __future__ import annotations

import math

import numpy as np

from wgqa_jax.core.errors import UserError
from wgqa_jax.grouping import calibrated_merge, kv_merge, latent_merge, variants


def divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def allocate(errors: dict, total: int) -> dict:
  """{module: G} minimising sum errors[module][G] with sum G <= total. errors: {module:
  {G: error}}. Raises UserError when even the smallest G everywhere exceeds the total."""
  modules = list(errors)
  least = sum(min(errors[m]) for m in modules)
  if least > total:
    raise UserError(
      f"a budget of {total} KV heads cannot cover {len(modules)} attention "
      f"modules (at least {least})"
    )
  inf = np.inf
  best = np.full(total + 1, inf)  # best[u]: least error of the modules so far using u heads
  best[0] = 0.0
  choice = []
  for m in modules:
    new, pick = np.full(total + 1, inf), np.zeros(total + 1, int)
    for g, err in sorted(errors[m].items()):
      if g > total:
        continue
      shifted = np.full(total + 1, inf)
      shifted[g:] = best[: total + 1 - g] + err
      better = shifted < new
      new[better], pick[better] = shifted[better], g
    best = new
    choice.append(pick)
  used = int(np.argmin(best))
  out = {}
  for m, pick in zip(reversed(modules), reversed(choice)):
    out[m] = int(pick[used])
    used -= out[m]
  return {m: out[m] for m in modules}


def module_errors(read, cfg, stats, variant: str) -> dict:
  """{module: {G: the calibration error of `variant`'s merge at G}} for every cached module,
  one module in memory at a time; read(path) gives one param (our layout) of the MHA model."""
  merge = variants.get(variant).proxy_merge
  if merge is None:
    raise UserError(f"{variant!r} has no calibration error to spread KV heads by")
  h = cfg.num_heads
  names = "qkvo" if merge == "search" else "kv"  # search reorders heads: q and o move too
  out = {}
  for path in cfg.cached_modules():
    module = {name: np.asarray(read(path + (name,)), np.float64) for name in names}
    gram = stats.gram(path)
    out[path] = {
      g: calibrated_merge.proxy_error(
        merge, module, gram, kv_merge.kv_index(h, g), cfg.rotary_keys, cfg.reorderable_heads(path)
      )
      for g in divisors(h)
    }
  return out


def by_proxy(read, cfg, stats, variant: str, kv_heads: int) -> dict:
  """{module: G}: kv_heads x (cached modules) KV heads allocated by the calibration error of
  `variant`'s merge. For mla, {module: latent rank}: the bytes of the uniform rank the same
  kv_heads give (variants.LatentAttention), spread by latent_merge.proxy_errors."""
  if isinstance(variants.get(variant), variants.LatentAttention):
    return latent_ranks(read, cfg, stats, variants.grouped_config(cfg, variant, kv_heads))
  errors = module_errors(read, cfg, stats, variant)
  return allocate(errors, kv_heads * len(errors))


def latent_ranks(read, cfg, stats, mla_cfg) -> dict:
  """{module: rank}: mla_cfg's uniform latent rank x (cached modules), in steps of d_kv / 2,
  spread over the modules by the calibration error of the latent conversion."""
  grouping = mla_cfg.grouping
  uniform, full = grouping.latent_rank, 2 * cfg.num_heads * cfg.head_dim
  step = math.gcd(uniform, max(1, cfg.head_dim // 2))
  errors = {}
  for path in cfg.cached_modules():
    module = {name: np.asarray(read(path + (name,)), np.float64) for name in "qkv"}
    errs = latent_merge.proxy_errors(module, stats.gram(path), cfg.rotary_keys, grouping.rope_heads)
    errors[path] = {u: float(errs[u * step]) for u in range(1, full // step + 1)}
  units = allocate(errors, uniform // step * len(errors))
  return {path: u * step for path, u in units.items()}
