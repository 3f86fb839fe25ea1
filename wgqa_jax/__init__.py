"""wgqa_jax: Flax T5 with grouped (GQA/MQA) and weighted-grouped (WGQA) key/value attention."""
from wgqa_jax.models.t5_config import T5Config, preset
from wgqa_jax.variants import Grouping

__all__ = ["Grouping", "T5Config", "preset"]
__version__ = "0.1.0"
