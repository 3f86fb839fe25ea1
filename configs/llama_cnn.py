"""A pretrained MHA Llama-architecture checkpoint uptrained into a grouped variant on
CNN/DailyMail, as instruction-style pairs (article -> highlights, loss on the highlights).

    python -m wgqa_jax.train --config=configs/llama_cnn.py:LLAMA_DIR_OR_ID \
        --workdir=/tmp/llama_wgqa \
        --config.grouping.variant=wgqa --config.grouping.kv_heads=8 --config.mesh.model=4

ARG is the checkpoint (a HF directory or hub id, e.g. a Llama-2-7B or a small research model);
its own tokenizer is used. Needs TFDS cnn_dailymail (array_record). Then fold and export a native
GQA checkpoint: python -m wgqa_jax.convert --params=/tmp/llama_wgqa/final --fold --export_hf=OUT.
Settings: AdamW lr 2e-5 with 100 warmup steps and linear decay (1e-3, the T5 paper's, is far
too high for a billion-parameter decoder), batch 32, 1 epoch, articles 1024 / highlights 128
tokens, bf16 compute.
"""

from wgqa_jax.training.config import base_config


def get_config(checkpoint: str = "LLAMA_DIR_OR_ID"):
  c = base_config()
  c.model.init_from = checkpoint
  c.model.dtype = "bfloat16"
  c.data.tokenizer = checkpoint
  c.data.dataset = "cnn_dailymail"
  c.data.max_input_length = 1024
  c.data.max_target_length = 128
  c.grouping.variant = "wgqa"
  c.grouping.kv_heads = 8
  c.optim.loss_on = "answer"
  c.optim.learning_rate = 2e-5
  c.optim.warmup_steps = 100
  c.optim.num_epochs = 1.0
  c.eval.batch_size = 16
  return c
