"""Model families and what they share.

  family.py       the Family interface every family provides, and the one registry
  config_file.py  what every model config does alike (replace, save, from_dict)
  attention.py    one grouped attention module for every family (K/V never repeated)
  layers.py       RMSNorm, remat and scanned layer stacks
  ops.py          the dense projection (a fast weight gradient on XLA:CPU)
  t5/, llama/     the families, one folder each

Architecture presets (`preset(name)`, the training config's model.arch) are named across the
families: "tiny" and "t5-*" are T5, "llama-*" Llama.
"""

from wgqa_jax.models.family import (
  config_from_dict,
  config_from_hf,
  families,
  family_of,
  preset,
  presets,
)

__all__ = ["config_from_dict", "config_from_hf", "families", "family_of", "preset", "presets"]
