"""`python -m wgqa_jax.pareto`: the command line is wgqa_jax/tools/pareto.py."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import pareto

  cli.run(pareto.main, pareto.FLAGS)
