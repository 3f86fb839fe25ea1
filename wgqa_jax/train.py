"""`python -m wgqa_jax.train`: the command line is wgqa_jax/tools/train.py."""

if __name__ == "__main__":
  # a preemption (SIGTERM / SIGINT) is caught from the first moment, before JAX is imported
  from wgqa_jax.core import signals

  signals.catch_early()
  from wgqa_jax.core import cli
  from wgqa_jax.tools import train

  cli.run(train.main, train.FLAGS)
