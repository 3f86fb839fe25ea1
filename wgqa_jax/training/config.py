"""The training config: every key with its default, in sections; configs/*.py start from here.

    c = base_config()  # sections: model, grouping, data, optim, mesh, eval, checkpoint
    c.grouping.variant = "gqa"
    --config.grouping.kv_heads=4 --config.optim.learning_rate=3e-4     (on the command line)

Optional values are `placeholder()`s (None until set). The returned ConfigDict is locked: a
misspelt key fails with the known keys. training.validation checks the values, each against
its owner (variants, datasets, presets, ...); this module imports none of them, so a config file
loads fast.
"""

from __future__ import annotations

import json

import ml_collections
from flax import traverse_util
from ml_collections.config_dict import placeholder


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # data order, dropout, RandWGQA init, tiny-random init
  c.log_every = 50  # steps between train metrics (JSONL + TensorBoard)
  # ---- model ----
  c.model = ml_collections.ConfigDict()
  c.model.init_from = "tiny-random"  # "tiny-random" | HF dir or hub id (t5-small) | wgqa params dir
  # architecture preset for init_from=tiny-random: T5 "tiny", "t5-small", ...; decoder-only
  # "llama-tiny"
  c.model.arch = "tiny"
  c.model.dtype = "float32"  # compute dtype: bfloat16 on GPUs
  # the params' (and gradients') dtype: "float32", or "bfloat16" (half the memory; no float32
  # master copy: each update is added in float32 and rounded back stochastically)
  c.model.param_dtype = "float32"
  c.model.dropout_rate = placeholder(float)  # unset: the checkpoint's value
  # rematerialise each layer in the backward pass: "none" (keep every activation), "full"
  # (keep each layer's input: least memory, ~1/3 more compute), "dots" (keep the projections'
  # outputs, recompute attention and elementwise work)
  c.model.remat = "none"
  c.model.scan_layers = False  # each layer stack as one scanned layer: compile time flat in depth
  # attention's form (docs/gpu.md): "einsum" (logits materialised); "dot_product"
  # (jax.nn.dot_product_attention: cuDNN flash on a GPU where the run allows it, else its XLA
  # form); "cudnn" (cuDNN flash or a one-line refusal); "blockwise" (keys in blocks of 512, an
  # online softmax: no logits array for the whole sequence, on any device)
  c.model.attention = "einsum"
  # ---- grouping ----
  c.grouping = ml_collections.ConfigDict()
  # mha | mqa | gqa | wgqa | randwgqa | colwgqa | colrandwgqa | simgqa | asymgqa | kdgqa | dgqa
  # | pgqa | aligned | svd | search | mla (wgqa_jax/grouping/variants.py; docs/variants.md)
  c.grouping.variant = "wgqa"
  c.grouping.kv_heads = 2  # G (mha and mqa fix it themselves; mla: the KV bytes of G heads)
  c.grouping.group_encoder = False  # papers: decoder self- and cross-attention only
  c.grouping.group_sizes = placeholder(tuple)  # asymgqa: contiguous group sizes, e.g. (3, 1, 2, 2)
  # pgqa: logit noise std (unset: the variant's 0.1)
  c.grouping.attention_noise = placeholder(float)
  c.grouping.regroup_every = 0  # simgqa: regroup query heads by similarity every N steps (0: off)
  # aligned / svd / search / mla: training batches the MHA model runs on to calibrate the merge
  # (the run's first batches; kept in WORKDIR/calibration.npz)
  c.grouping.calibration_batches = 16
  # "uniform": kv_heads in every module; "proxy" (aligned / svd / search / mla): the same KV heads
  # (mla: total latent rank) in all, spread over the cached attention modules where the
  # calibration error drops most (wgqa_jax/grouping/kv_budget.py)
  c.grouping.layer_budget = "uniform"
  # ---- data ----
  c.data = ml_collections.ConfigDict()
  # what the model learns: "pairs" (input -> target tasks), or continued pretraining on a text
  # corpus: "span_corruption" (T5) or "causal_lm" (decoder-only); wgqa_jax/data/text_rows.py
  c.data.objective = "pairs"
  # pairs: synthetic_summarize | synthetic_translate (offline) | cnn_dailymail | multi_news |
  # wmt14_de_en (TFDS). Corpora: python_stdlib (offline) | tfds:NAME (e.g. tfds:c4/en) | a dir
  # from python -m wgqa_jax.prepare_corpus (local JSON lines / Parquet / text)
  c.data.dataset = "synthetic_summarize"
  c.data.text_field = "text"  # corpora from TFDS: the feature that holds each document's text
  # causal_lm: rows are max_input_length + max_target_length tokens of concatenated documents;
  # False: attention and loss stay within each document (segment ids); True: they cross
  c.data.cross_documents = False
  c.data.data_dir = placeholder(str)  # TFDS data_dir (unset: the TFDS default)
  c.data.tokenizer = "bytes"  # "bytes" | "sentencepiece" (trained on the fly) | HF dir or id
  c.data.max_input_length = 512  # tokens, truncated (EOS kept) and padded
  c.data.max_target_length = 256  # tokens; also the eval decode length by default
  c.data.train_examples = placeholder(int)  # unset: the whole split (corpora: documents)
  # pack several examples per row (T5X style: segment ids keep them apart); fewer pad tokens
  c.data.pack = False
  # examples packed together (bigger: tighter rows); corpora: documents per window
  c.data.pack_window = 512
  c.data.workers = 2  # grain worker processes that tokenize and pack (0: threads)
  # ---- optim ----
  c.optim = ml_collections.ConfigDict()
  # "adamw", or "adafactor" (T5X's: factored second moments, no momentum, updates relative to
  # each param's scale; optimizer state a fraction of AdamW's)
  c.optim.optimizer = "adamw"
  # keep the optimizer state in host memory (pinned_host), brought to the device for each update
  c.optim.offload_state = False
  c.optim.batch_size = 32  # global batch
  c.optim.grad_accum_steps = 1  # micro-batches per step (same result as the full batch)
  c.optim.num_epochs = 3.0  # paper: 3
  c.optim.num_train_steps = placeholder(int)  # set: overrides num_epochs
  c.optim.learning_rate = 1e-3  # AdamW peak, linear decay to 0 (paper: 1e-3)
  c.optim.warmup_steps = 0  # linear warmup before the decay
  c.optim.weight_decay = 0.0  # AdamW decoupled weight decay
  c.optim.max_grad_norm = 1.0  # 0 disables clipping
  c.optim.label_smoothing = 0.0  # of the cross-entropy targets
  c.optim.z_loss = 0.0  # coefficient of log(Z)^2 (PaLM-style stabiliser)
  # decoder-only models, trained on "[BOS] input EOS target EOS": "all" tokens (language
  # modelling; the default when unset) or the "answer" (target) only. T5: always its targets.
  c.optim.loss_on = placeholder(str)
  # consecutive steps the NaN guard may skip (non-finite loss, gradients or update) before the
  # run stops as diverged, its last good checkpoint intact
  c.optim.max_skipped_steps = 10
  # ---- mesh ----
  c.mesh = ml_collections.ConfigDict()
  # devices = data x fsdp x model; the batch is split over data x fsdp
  # data-parallel ways, params replicated (unset: every device the other axes leave)
  c.mesh.data = placeholder(int)
  # data-parallel ways that also shard params and optimizer state (ZeRO-3); -1: every device
  # the other axes leave
  c.mesh.fsdp = 1
  c.mesh.model = 1  # tensor-parallel ways (heads, MLP, vocab split)
  # logical-axis rules over the defaults (wgqa_jax/core/sharding.py), as t5x / MaxText let a
  # config override them: "LOGICAL=MESH_AXIS,...", a mesh axis, a+b, or none (unsplit), e.g.
  # "mlp=none,vocab=fsdp". Params: embed=fsdp, heads / kv_heads / mlp / vocab=model
  c.mesh.param_rules = placeholder(str)
  # ... and for activations: batch=data+fsdp, heads / kv_heads / mlp / vocab=model
  c.mesh.activation_rules = placeholder(str)
  # ---- eval ----
  c.eval = ml_collections.ConfigDict()
  c.eval.every = 500  # steps between evals; 0: only at the end
  c.eval.at_start = False  # also evaluate the converted model before any update
  # validation examples decoded for ROUGE / BLEU (corpora: held-out documents whose rows give
  # the loss)
  c.eval.examples = 256
  # corpora: at most this many held-out rows (the first), whatever the documents' sizes
  c.eval.max_rows = 4096
  c.eval.batch_size = 64  # batch of the eval loss and cached greedy decoding
  c.eval.max_decode_length = placeholder(int)  # unset: data.max_target_length
  # keep best/ by this metric (unset: rougeLsum, or bleu; corpora: loss, lowest kept)
  c.eval.best_metric = placeholder(str)
  # ---- checkpoint ----
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 500  # steps between orbax checkpoints (async)
  c.checkpoint.keep = 3  # latest checkpoints kept
  c.lock()
  return c


LAYER_BUDGETS = ("uniform", "proxy")  # grouping.layer_budget
OPTIMIZERS = ("adamw", "adafactor")  # optim.optimizer (training.steps.make_optimizer)
PARAM_DTYPES = ("float32", "bfloat16")  # model.param_dtype
# Keys a resumed run may change: where and how often it logs, evaluates and saves, the mesh and
# its sharding rules (a checkpoint restores onto any mesh), remat, attention's form, scanned
# layers, gradient accumulation and where the optimizer state lives (the same step either way),
# and where TFDS data lives and how many processes read it. Every other key shapes the model,
# the data or the optimizer schedule.
RESUMABLE_CHANGES = (
  "log_every",
  "mesh.data",
  "mesh.fsdp",
  "mesh.model",
  "mesh.param_rules",
  "mesh.activation_rules",
  "model.remat",
  "model.attention",
  "model.scan_layers",
  "optim.grad_accum_steps",
  "optim.offload_state",
  "optim.max_skipped_steps",
  "data.data_dir",
  "data.workers",
  "eval.every",
  "eval.at_start",
  "eval.examples",
  "eval.max_rows",
  "eval.batch_size",
  "eval.max_decode_length",
  "checkpoint.every",
  "checkpoint.keep",
)


# Keys added after runs were started without them, and the value those runs had: a workdir's
# config.json without the key resumes under that value.
ADDED_KEYS = {"model.param_dtype": "float32", "optim.optimizer": "adamw"}


def resume_differences(saved: dict, c: ml_collections.ConfigDict) -> list[str]:
  """'key: old -> new' for each key that differs between a workdir's config.json (`saved`) and
  `c` and that a resumed run must not change."""
  old = {**ADDED_KEYS, **traverse_util.flatten_dict(saved, sep=".")}
  new = traverse_util.flatten_dict(json.loads(c.to_json_best_effort()), sep=".")
  return [
    f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
    for k in sorted(set(old) | set(new))
    if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)
  ]


def paper_config(checkpoint: str, variant: str, kv_heads: int) -> ml_collections.ConfigDict:
  """The WGQA paper's setup: a pretrained T5 uptrained on CNN/DailyMail ("summarize: "), AdamW
  lr 1e-3 with linear decay, batch 32, 3 epochs, inputs 512 / targets 256."""
  c = base_config()
  c.model.init_from = checkpoint
  c.model.dtype = "bfloat16"
  c.data.tokenizer = checkpoint
  c.data.dataset = "cnn_dailymail"
  c.grouping.variant = variant
  c.grouping.kv_heads = kv_heads
  return c


def tiny_config(dataset: str = "synthetic_summarize") -> ml_collections.ConfigDict:
  """The offline setup (configs/tiny*.py): a tiny random T5 uptrained into WGQA (G=2) on a
  generated task, with a sentencepiece vocabulary trained on the fly. Minutes on 2 CPU cores."""
  c = base_config()
  c.data.dataset = dataset
  c.data.tokenizer = "sentencepiece"
  c.data.max_input_length = 64
  c.data.max_target_length = 16
  c.optim.num_epochs = 0
  c.optim.num_train_steps = 1500
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.log_every = 25
  c.eval.examples = 64
  c.data.workers = 0  # tokenizing a tiny task takes less than starting worker processes
  return c


def config_docs() -> str:
  """Markdown tables of every training config key: default and the comment beside it in
  base_config() (the source is the documentation)."""
  import inspect
  import re

  doc, pending = {}, []
  for line in inspect.getsource(base_config).splitlines():
    m = re.match(r"\s*c\.([\w.]+) = (.+?)(?:\s+#\s*(.*))?$", line)
    if m and "ConfigDict()" not in m.group(2):
      doc[m.group(1)] = " ".join(pending + ([m.group(3)] if m.group(3) else []))
      pending = []
    elif line.strip().startswith("# ----"):
      pending = []
    elif line.strip().startswith("#"):
      pending.append(line.strip()[1:].strip())
  c = base_config()
  out = [
    "# Training config keys",
    "",
    "Generated by `python -m wgqa_jax.train_config > docs/CONFIG.md` from "
    "`wgqa_jax/training/config.py`. Override any key with `--config.SECTION.KEY=VALUE`; "
    "unknown keys are errors; `None` marks an optional value (a placeholder).",
    "",
  ]
  last = None
  for key in doc:
    section = key.rpartition(".")[0] or "top level"
    if section != last:
      last = section
      out += ["", f"## {section}", "", "| key | default | meaning |", "|---|---|---|"]
    value = c
    for part in key.split("."):
      value = value[part]
    out.append(f"| `{key}` | `{value!r}` | {doc[key].replace('|', '/')} |")
  return "\n".join(out) + "\n"


def keys(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every dotted key of a config, sections flattened."""
  out = []
  for k, v in c.items():
    out += keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [prefix + k]
  return out
