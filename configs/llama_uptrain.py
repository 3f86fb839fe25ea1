"""Uptraining a decoder-only model as the GQA paper does: convert a pretrained MHA
Llama-architecture checkpoint, continue its pretraining (causal LM on documents) for a small share
of its original budget, then (optionally) fine-tune on a task.

    # stage 1: continued pretraining on a text corpus (TFDS c4/en, or a prepared local corpus)
    python -m wgqa_jax.train --config=configs/llama_uptrain.py:HF_DIR_OR_ID \
        --config.data.dataset=/data/my_corpus --workdir=/tmp/llama_gqa_uptrain
    # stage 2 (optional): fine-tune on a task, from the uptrained model
    python -m wgqa_jax.train --config=configs/llama_uptrain.py:HF_DIR_OR_ID,cnn_dailymail \
        --config.model.init_from=/tmp/llama_gqa_uptrain/final --workdir=/tmp/llama_gqa_cnn

    # offline: a tiny random Llama on the Python standard library corpus
    python -m wgqa_jax.train --config=configs/llama_uptrain.py:tiny \
        --workdir=/tmp/llama_tiny_uptrain

ARG is CHECKPOINT[,TASK]: a HF directory or hub id of an MHA model (its own tokenizer is used),
or `tiny`. Stage 1: data.objective=causal_lm, documents `[BOS] text EOS` packed into rows of
max_input_length + max_target_length = 4096 tokens, attention and loss within each document
(--config.data.cross_documents=True lets them cross, as GPT-style pretraining does), loss on
every token; AdamW lr 2e-5, 100 warmup steps, linear decay, 2,000 steps of 8 x 4096 tokens
(65M tokens: set optim.num_train_steps to your budget, e.g. 5% of the original pretraining).
Stage 2: the instruction-style fine-tuning of configs/llama_cnn.py (loss on the answer).
Variant: GQA-8 (--config.grouping.variant / kv_heads). Real sizes: see configs/scale.py for
FSDP, remat and scanned layers (--config.mesh.fsdp=-1 --config.model.remat=full).
"""

from wgqa_jax.training.config import base_config, tiny_config


def get_config(arg: str = "HF_DIR_OR_ID"):
  checkpoint, _, task = arg.partition(",")
  if checkpoint == "tiny":
    c = tiny_config(task or "synthetic_summarize")
    c.model.arch = "llama-tiny"
    if task:
      c.optim.loss_on = "answer"
      return c
    c.data.objective, c.data.dataset = "causal_lm", "python_stdlib"
    c.data.max_input_length, c.data.max_target_length = 96, 32  # rows of 128 tokens
    c.data.pack_window = 64
    c.optim.batch_size = 32
    c.optim.num_train_steps = 100
    c.eval.examples = 64  # held-out documents: all of the standard library's
    c.eval.every, c.checkpoint.every = 250, 250
    return c
  c = base_config()
  c.model.init_from = checkpoint
  c.model.dtype = "bfloat16"
  c.data.tokenizer = checkpoint
  c.grouping.variant, c.grouping.kv_heads = "gqa", 8
  c.optim.learning_rate = 2e-5
  c.optim.warmup_steps = 100
  c.eval.batch_size = 16
  if task:  # stage 2: fine-tuning on (article, highlights) pairs, loss on the answer
    c.model.init_from = "UPTRAINED_WORKDIR/final"
    c.data.dataset = task
    c.data.max_input_length, c.data.max_target_length = 1024, 128
    c.optim.loss_on = "answer"
    c.optim.num_epochs = 1.0
    return c
  c.data.objective, c.data.dataset = "causal_lm", "tfds:c4/en"
  c.data.max_input_length, c.data.max_target_length = 3840, 256
  c.optim.batch_size = 8
  c.optim.num_train_steps = 2000
  c.eval.examples = 200
  c.eval.every, c.checkpoint.every = 500, 500
  return c
