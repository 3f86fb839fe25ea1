"""`python -m wgqa_jax.train_config > docs/CONFIG.md`: the command line is
wgqa_jax/tools/config_docs.py (the config itself: wgqa_jax/training/config.py)."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import config_docs

  cli.run(config_docs.main, config_docs.FLAGS)
