"""One process of a multi-process CPU run (tests/training/test_multihost.py starts several).

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR DEVICES_PER_PROCESS \
        [STOP] [OBJECTIVE]

A 30-step run, stopped (as if preempted, after saving) once STOP steps are done (default 20; 30
finishes). OBJECTIVE: pairs (default; the offline task) or causal_lm (a tiny Llama on the
standard-library corpus). NUM_PROCESSES=1 runs without jax.distributed. Prints "RESULT <json>" with
the last metrics.
"""

import json
import os
import sys

pid, n, port, workdir, local_devices = sys.argv[1:6]
stop = int(sys.argv[6]) if len(sys.argv) > 6 else 20
objective = sys.argv[7] if len(sys.argv) > 7 else "pairs"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
if int(n) > 1:  # the variables launch/multihost.sh sets
  os.environ.update(
    JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=n, JAX_PROCESS_ID=pid
  )
import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wgqa_jax.tools.train import initialize_distributed  # noqa: E402
from wgqa_jax.training import trainer  # noqa: E402
from wgqa_jax.training.config import tiny_config  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across hosts
initialize_distributed()  # what `python -m wgqa_jax.train` does first

c = tiny_config()
c.data.train_examples, c.optim.batch_size, c.optim.num_train_steps = 256, 8, 30
c.eval.examples, c.eval.batch_size, c.eval.every = 12, 8, 10  # the last eval batch is padded
c.checkpoint.every, c.log_every = 10, 10
if objective == "causal_lm":
  c.model.arch, c.data.objective, c.data.dataset = "llama-tiny", "causal_lm", "python_stdlib"
  c.data.tokenizer, c.data.pack_window, c.eval.examples = "bytes", 4, 3
try:
  out = trainer.train(c, workdir, stop_after=stop if stop < 30 else None)
except trainer.Preempted as stopped:
  out = stopped.metrics
print(
  "RESULT "
  + json.dumps(
    {
      "process": jax.process_index(),
      "count": jax.process_count(),
      "devices": jax.device_count(),
      **out,
    }
  ),
  flush=True,
)
