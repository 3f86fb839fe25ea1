"""Model families. Each family module gives a config dataclass (with a `grouping` section and
`attention_modules()`), Flax modules, `init_params`, `param_shapes` and `param_axes`; the grouping
code (wgqa_jax.attention, wgqa_jax.variants) is shared by all of them.

- t5: Flax T5 encoder-decoder (models/t5.py, config in models/t5_config.py).
"""
