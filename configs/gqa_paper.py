"""The GQA paper's uptraining recipe (Ainslie et al. 2023): a pretrained MHA T5 is converted,
then trained on its own pretraining objective (span corruption on C4) for alpha = 5% of its
pretraining steps; only then fine-tuned on a task.

    # stage 1: uptrain (continued pretraining; init_from the public MHA checkpoint)
    python -m wgqa_jax.train --config=configs/gqa_paper.py:gqa,xl --workdir=/tmp/gqa_xl_uptrain \
        --config.data.data_dir=/data/tfds
    # stage 2: fine-tune the uptrained model on a task
    python -m wgqa_jax.train --config=configs/gqa_paper.py:gqa,xl,cnn_dailymail \
        --config.model.init_from=/tmp/gqa_xl_uptrain/final --workdir=/tmp/gqa_xl_cnn

    # offline, on the Python standard library corpus, a tiny random T5:
    python -m wgqa_jax.train --config=configs/gqa_paper.py:gqa,tiny --workdir=/tmp/gqa_tiny_uptrain
    python -m wgqa_jax.train --config=configs/gqa_paper.py:gqa,tiny,synthetic_summarize \
        --config.model.init_from=/tmp/gqa_tiny_uptrain/final \
        --config.data.tokenizer=/tmp/gqa_tiny_uptrain/spm.model --workdir=/tmp/gqa_tiny_ft

ARG is VARIANT,SIZE[,TASK]. VARIANT: any of wgqa_jax.grouping.variants (mha, mqa, gqa, wgqa, ...);
SIZE: small, base, large, xl, xxl (google/t5-v1_1-SIZE, the paper's T5.1.1; G=8 as the paper's
GQA-8, or the head count when smaller) or tiny (offline). Without TASK: stage 1, span corruption
(noise density 0.15, mean span 3, rows of 512 inputs / 114 targets, batch 128: T5's pretraining
shape) on TFDS c4/en (prepare it with `tfds build c4/en --file_format=array_record`, or point
data.dataset at a corpus from python -m wgqa_jax.prepare_corpus), for
round(recipe.alpha x recipe.pretraining_steps) steps: the released T5.1.1 checkpoints were
trained for 1,000,000 steps, so 50,000 at alpha = 0.05; `--config.recipe.alpha=0.1` changes it.
With TASK (cnn_dailymail, multi_news, wmt14_de_en; offline: synthetic_summarize,
synthetic_translate): stage 2, fine-tuning as configs/paper.py does, init_from the stage-1
workdir's final/ (set it: --config.model.init_from=.../final).
Differences from the paper: AdamW with linear decay (the paper: Adafactor), lr 1e-4 in stage 1.
"""

import ml_collections

from wgqa_jax.training.config import base_config, paper_config, tiny_config

SIZES = {"small": 6, "base": 8, "large": 8, "xl": 8, "xxl": 8}  # size: KV heads (GQA-8)
PRETRAINING_STEPS = {"tiny": 2000}  # the offline MHA model: wgqa_jax.sweep --pretrain_steps
T5_1_1_PRETRAINING_STEPS = 1_000_000


def recipe(c, pretraining_steps: int) -> None:
  """Stage 1's budget as a function of alpha, resolved when the run reads it (so that
  --config.recipe.alpha=... changes the steps)."""
  c.unlock()
  c.recipe = ml_collections.ConfigDict()
  c.recipe.alpha = 0.05  # share of the pretraining steps spent uptraining (GQA paper: 0.05)
  c.recipe.pretraining_steps = pretraining_steps
  c.optim.num_train_steps = (
    c.recipe.get_ref("alpha") * c.recipe.get_ref("pretraining_steps")
  ).to_int()
  c.lock()


def get_config(arg: str = "gqa,xl"):
  parts = arg.split(",")
  if len(parts) not in (2, 3) or parts[1] not in (*SIZES, "tiny"):
    raise ValueError(
      f"configs/gqa_paper.py:{arg}: ARG is VARIANT,SIZE[,TASK] with SIZE one of "
      f"{sorted(SIZES) + ['tiny']}"
    )
  variant, size, task = parts[0], parts[1], (parts[2] if len(parts) == 3 else None)
  if size == "tiny":
    c = tiny_config(task or "synthetic_summarize")
    c.grouping.variant, c.grouping.kv_heads = variant, 2
    if task is None:  # stage 1 offline: span corruption on the standard library
      c.data.objective, c.data.dataset = "span_corruption", "python_stdlib"
      c.data.max_input_length, c.data.max_target_length = 128, 32  # 141 raw tokens -> 128 / 29
      c.data.pack_window = 64
      c.optim.batch_size = 32
      c.eval.examples = 64  # held-out documents: all of the standard library's
      c.eval.every, c.checkpoint.every = 250, 250
      recipe(c, PRETRAINING_STEPS["tiny"])
    return c
  checkpoint = f"google/t5-v1_1-{size}"
  if task is not None:  # stage 2: the paper's fine-tuning on a task, from the uptrained model
    c = paper_config("UPTRAINED_WORKDIR/final", variant, SIZES[size])
    c.data.tokenizer = checkpoint
    c.data.dataset = task
    return c
  c = base_config()
  c.model.init_from = checkpoint
  c.model.dtype = "bfloat16"
  c.data.tokenizer = checkpoint
  c.data.objective, c.data.dataset = "span_corruption", "tfds:c4/en"
  c.data.max_input_length, c.data.max_target_length = 512, 114
  c.grouping.variant, c.grouping.kv_heads = variant, SIZES[size]
  c.optim.batch_size = 128
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 1000
  c.eval.examples = 1000
  c.eval.every, c.checkpoint.every = 2000, 2000
  recipe(c, T5_1_1_PRETRAINING_STEPS)
  return c
