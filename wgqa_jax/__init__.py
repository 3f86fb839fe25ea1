"""wgqa_jax: Flax T5 with grouped (GQA/MQA) and weighted-grouped (WGQA) key/value attention."""
from wgqa_jax.config import T5Config, preset

__all__ = ["T5Config", "preset"]
__version__ = "0.1.0"
