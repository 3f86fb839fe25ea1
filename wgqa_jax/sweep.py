"""`python -m wgqa_jax.sweep`: the command line is wgqa_jax/tools/sweep.py."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import sweep

  cli.run(sweep.main, sweep.FLAGS)
