"""`python -m wgqa_jax.harness`: the command line is wgqa_jax/tools/harness.py."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import harness

  cli.run(harness.main, harness.FLAGS)
