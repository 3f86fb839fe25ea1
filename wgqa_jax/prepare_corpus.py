"""`python -m wgqa_jax.prepare_corpus`: the command line is wgqa_jax/tools/prepare_corpus.py."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import prepare_corpus

  cli.run(prepare_corpus.main, prepare_corpus.FLAGS)
