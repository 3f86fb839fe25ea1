"""Writes the Colab notebooks (run: python colab/make_notebooks.py). Edit here, not the .ipynb."""

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''# Colab: clone and install (skipped when wgqa_jax is already importable, e.g. in this repo).
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("wgqa_jax") is None:
    if not os.path.exists("wgqa_jax_repo"):
        subprocess.run(["git", "clone", os.environ.get("WGQA_REPO", "https://github.com/your-org/wgqa_jax"),
                        "wgqa_jax_repo"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "wgqa_jax_repo[torch]"], check=True)
    sys.path.insert(0, "wgqa_jax_repo")
import jax
# Real t5-small on a GPU runtime with internet; the offline tiny default otherwise.
USE_REAL = jax.default_backend() == "gpu" and os.environ.get("WGQA_OFFLINE") != "1"
STEPS = int(os.environ.get("WGQA_NOTEBOOK_STEPS", "300"))
print("backend:", jax.default_backend(), "| real t5-small:", USE_REAL, "| steps:", STEPS)'''


def notebook(name, cells):
  nb = new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.cells = (
    [new_markdown_cell(cells[0])]
    + [new_code_cell(SETUP)]
    + [new_markdown_cell(c[3:]) if c.startswith("## ") else new_code_cell(c) for c in cells[1:]]
  )
  nbformat.write(nb, os.path.join(HERE, name))


notebook(
  "01_convert_hf_to_gqa.ipynb",
  [
    "# 1. Convert a Hugging Face T5 into GQA / WGQA and check the logits\n\n"
    "Offline (CPU): a tiny random HF T5 built with transformers. GPU runtime: real `t5-small`.",
    '''import numpy as np, torch, tempfile
from transformers import T5Config, T5ForConditionalGeneration
from wgqa_jax.grouping import variants
from wgqa_jax.models import t5
from wgqa_jax.store import hf as hf_io
if USE_REAL:
    hf_dir = "t5-small"
    hf = T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
else:
    torch.manual_seed(0)
    hf = T5ForConditionalGeneration(T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                             num_heads=4, dropout_rate=0.0, decoder_start_token_id=0)).eval()
    hf_dir = tempfile.mkdtemp()
    hf.save_pretrained(hf_dir)
params, cfg = hf_io.from_hf(hf_dir)
print(cfg.num_heads, "heads,", cfg.num_encoder_layers, "+", cfg.num_decoder_layers, "layers")''',
    "## MHA: our Flax model equals HF PyTorch",
    '''rng = np.random.default_rng(0)
ids = rng.integers(2, cfg.vocab_size, (2, 12)); dec = rng.integers(2, cfg.vocab_size, (2, 7))
with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec)).logits.numpy()
ours = np.asarray(t5.T5(cfg).apply({"params": params}, ids, dec))
print("max |ours - HF| =", np.abs(ours - ref).max())
assert np.allclose(ours, ref, atol=1e-4)''',
    "## MHA -> GQA / MQA / WGQA, and folding WGQA back into GQA",
    '''G = 2
for variant in ("gqa", "mqa", "wgqa"):
    p, c = variants.from_mha(params, cfg, variant, G)
    out = np.asarray(t5.T5(c).apply({"params": p}, ids, dec))
    print(f"{variant:5s}: {c.kv_heads} KV heads, decoder K kernel {p['decoder']['layers_0']['self_attention']['k'].shape}, "
          f"logit change vs MHA {np.abs(out - ours).mean():.3f}")
wp, wc = variants.from_mha(params, cfg, "wgqa", G)
fp, fc = variants.fold(wp, wc)
a = t5.T5(wc).apply({"params": wp}, ids, dec); b = t5.T5(fc).apply({"params": fp}, ids, dec)
print("folded WGQA == WGQA:", np.allclose(a, b, atol=1e-5))''',
  ],
)

notebook(
  "02_uptrain_and_evaluate.ipynb",
  [
    "# 2. Uptrain into WGQA and evaluate ROUGE\n\n"
    "Offline: the tiny random T5 on the built-in synthetic task. GPU runtime: `configs/paper.py:wgqa,small` "
    "(t5-small, CNN/DailyMail from TFDS).",
    '''import tempfile
from wgqa_jax.lab.evaluate import evaluate
from wgqa_jax.training import trainer
from wgqa_jax.training.config import base_config
workdir = tempfile.mkdtemp()
c = base_config()
if USE_REAL:
    from wgqa_jax.training.config import paper_config
    c = paper_config("t5-small", "wgqa", kv_heads=4)
    c.optim.batch_size, c.data.max_input_length, c.data.max_target_length = 16, 512, 128
else:
    c.data.tokenizer, c.data.max_input_length, c.data.max_target_length = "sentencepiece", 64, 16
    c.optim.learning_rate, c.optim.warmup_steps = 3e-3, 50
c.optim.num_epochs, c.optim.num_train_steps = 0, STEPS
c.eval.every, c.eval.examples, c.log_every, c.checkpoint.every = max(STEPS // 2, 1), 64, 25, max(STEPS // 2, 1)
last = trainer.train(c, workdir)
print({k: round(v, 3) for k, v in last.items()})''',
    "## Evaluate the best checkpoint on the test split (ROUGE with bootstrap CIs)",
    '''r, _ = evaluate(workdir, "test", num_examples=64, bootstrap=200, out=f"{workdir}/test.json")
for i in range(2):
    print("input:", r["inputs"][i][:90], "\\n  ref:", r["references"][i], "\\n pred:", r["predictions"][i])''',
  ],
)

notebook(
  "03_weights_and_kv_cache.ipynb",
  [
    "# 3. Learned WGQA weights and KV-cache savings",
    '''import tempfile
import matplotlib.pyplot as plt
from wgqa_jax import decoding
from wgqa_jax.grouping.variants import Grouping
from wgqa_jax.lab import analysis
from wgqa_jax.models import preset
from wgqa_jax.training import trainer
from wgqa_jax.training.config import base_config
workdir = tempfile.mkdtemp()
c = base_config()
c.data.tokenizer, c.data.max_input_length, c.data.max_target_length = "sentencepiece", 64, 16
c.optim.num_epochs, c.optim.num_train_steps, c.optim.learning_rate, c.optim.warmup_steps = 0, STEPS, 3e-3, 50
c.eval.every, c.eval.examples, c.checkpoint.every, c.checkpoint.keep = 0, 32, max(STEPS // 3, 1), 10
trainer.train(c, workdir)''',
    "## WGQA weights per checkpoint and a t-test against 0.5 (the GQA mean)",
    '''by_step = analysis.weights_by_step(workdir)
png = analysis.plot_weight_distributions(by_step, f"{workdir}/weights.png")
for step, w in by_step.items():
    t = analysis.ttest(w)
    print(f"step {step}: mean {t['mean']:.3f}, p = {t['p_value']:.3g}")
from IPython.display import Image, display
display(Image(png))''',
    "## KV-cache bytes per decoded batch: MHA vs GQA vs MQA (t5-small, bfloat16)",
    '''cfg = preset("t5-small", dtype="bfloat16")
lengths = [512, 1024, 2048, 4096]
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, g in (("MHA", 8), ("GQA-4", 4), ("GQA-2", 2), ("MQA", 1)):
    c = cfg.replace(grouping=Grouping(kv_heads=g))
    ax.plot(lengths, [decoding.cache_bytes(c, 8, s, 256) / 2**20 for s in lengths], marker="o", label=name)
ax.set_xlabel("source length"); ax.set_ylabel("cache MiB (batch 8, 256 new tokens)"); ax.legend()
plt.show()''',
  ],
)
