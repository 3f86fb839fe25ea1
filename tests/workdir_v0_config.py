"""The run behind tests/fixtures/workdir_v0: a tiny WGQA T5 on the built-in task, stopped
("preempted") after step 10 of 20 by the main of 2026-12-05, before the package was layered
(issue #32). test_old_workdir resumes it with today's code and compares the result with
tests/fixtures/workdir_v0_uninterrupted (the same run, uninterrupted, by that old main)."""

from wgqa_jax.training.config import tiny_config


def get_config():
  c = tiny_config("synthetic_summarize")
  c.update_from_flattened_dict(
    {
      "optim.num_train_steps": 20,
      "optim.batch_size": 8,
      "optim.warmup_steps": 5,
      "data.train_examples": 256,
      "log_every": 5,
      "eval.every": 0,
      "eval.examples": 8,
      "eval.batch_size": 8,
      "eval.max_decode_length": 8,
      "checkpoint.every": 10,
      "mesh.data": 1,
    }
  )
  return c
