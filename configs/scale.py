"""Real model sizes, set up to fit: FSDP over every device, full remat, scanned layers, bf16.

    python -m wgqa_jax.plan --config=configs/scale.py:llama-2-7b --devices=8 \
        --config.grouping.variant=wgqa --config.grouping.kv_heads=8
    python -m wgqa_jax.train --config=configs/scale.py:llama-2-7b \
        --config.model.init_from=/path/to/Llama-2-7b-hf \
        --config.data.tokenizer=/path/to/Llama-2-7b-hf

ARG is an architecture preset: llama-2-7b, llama-2-13b, llama-2-70b (decoder-only, rows of
3840 input + 256 target tokens = 4096, global batch 8), t5-v1_1-xl, t5-v1_1-xxl (the GQA paper's
model; 512 / 128 tokens, global batch 128). With init_from left at tiny-random the shapes are the
preset's (what the planner needs); point init_from at the real checkpoint to train it. Variant:
GQA-8 unless overridden. Adjust the mesh with --config.mesh.{data,fsdp,model}.
"""

from wgqa_jax.training.config import base_config

SHAPES = {  # preset: (max_input_length, max_target_length, global batch)
  "llama-2-7b": (3840, 256, 8),
  "llama-2-13b": (3840, 256, 8),
  "llama-2-70b": (3840, 256, 8),
  "t5-v1_1-xl": (512, 128, 128),
  "t5-v1_1-xxl": (512, 128, 128),
}


def get_config(arch: str = "llama-2-7b"):
  if arch not in SHAPES:
    raise ValueError(f"configs/scale.py:{arch}: choose from {sorted(SHAPES)}")
  c = base_config()
  inputs, targets, batch = SHAPES[arch]
  c.model.arch = arch
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  c.model.scan_layers = True
  c.grouping.variant = "gqa"
  c.grouping.kv_heads = 8
  c.data.max_input_length = inputs
  c.data.max_target_length = targets
  c.optim.batch_size = batch
  c.optim.learning_rate = 2e-5 if arch.startswith("llama") else 1e-4
  c.optim.warmup_steps = 100
  if arch.startswith("llama"):
    c.optim.loss_on = "all"
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c
