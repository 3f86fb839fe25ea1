"""`python -m wgqa_jax.plan`: the command line is wgqa_jax/tools/plan.py."""

if __name__ == "__main__":
  from wgqa_jax.core import cli
  from wgqa_jax.tools import plan

  cli.run(plan.main, plan.FLAGS)
