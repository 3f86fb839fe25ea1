"""`python -m wgqa_jax.convert`: the command line is wgqa_jax/tools/convert.py."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import convert

  cli.run(convert.main, convert.FLAGS)
