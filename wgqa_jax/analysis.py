"""`python -m wgqa_jax.analysis`: the command line is wgqa_jax/tools/analysis.py."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import analysis

  cli.run(analysis.main, analysis.FLAGS)
