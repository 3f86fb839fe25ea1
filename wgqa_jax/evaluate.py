"""`python -m wgqa_jax.evaluate`: the command line is wgqa_jax/tools/evaluate.py."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import evaluate

  cli.run(evaluate.main, evaluate.FLAGS)
