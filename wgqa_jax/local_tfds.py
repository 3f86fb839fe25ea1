"""`python -m wgqa_jax.local_tfds`: the command line is wgqa_jax/tools/local_tfds.py."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import local_tfds

  cli.run(local_tfds.main, local_tfds.FLAGS)
