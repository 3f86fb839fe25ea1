"""wgqa_jax: T5 and Llama-architecture models in JAX/Flax with grouped key/value attention
(MQA, GQA, WGQA, calibrated merges, per-module KV budgets), for uptraining MHA checkpoints into
models that are cheaper to serve.

The package is layered, each layer importing only those below it (docs/architecture.md):

  tools/      the command lines (python -m wgqa_jax.train, .evaluate, .convert, ...)
  lab/        experiments over runs: sweeps, the conversion lab (pareto), the planner, analysis
  training/   the config, the trainer and its parts, steps, objectives, calibration, metrics
  decoding/   generation with HF generate() semantics     store/  every file format we read
  data/       tasks, corpora, tokenizers, the pipeline    models/ the families and attention
  grouping/   the variants and the math of merging K/V heads
  core/       errors, the CLI convention, the workdir, mesh and sharding rules, numerics

Nothing heavy is imported here: `python -m wgqa_jax.train` catches a preemption before JAX
loads.
"""

__version__ = "0.1.0"
__all__ = ["Grouping", "preset", "presets"]


def __getattr__(name: str):
  if name == "Grouping":
    from wgqa_jax.grouping.variants import Grouping

    return Grouping
  if name in ("preset", "presets"):
    from wgqa_jax.models import family

    return getattr(family, name)
  raise AttributeError(f"module 'wgqa_jax' has no attribute {name!r}")
