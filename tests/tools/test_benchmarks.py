"""benchmarks/run.py still runs end to end (smoke preset, tiny model). Its timings are not checked
here; what is checked is what does not depend on the machine: every section is written, the KV cache
of G KV heads is exactly G/H of MHA's, and our greedy and beam tokens equal HF generate()'s."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cache_ratios(text: str) -> dict[str, float]:
  """{variant: cache / MHA} from the rows | context or source | batch | variant | cache |
  cache / MHA | ... of a results table."""
  ratios = {}
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if len(cells) == 7 and cells[2] in ("MHA", "GQA-2", "MQA"):
      ratios[cells[2]] = float(cells[4])
  return ratios


def run_script(script: str, flag: str, out, timeout: int, extra=()) -> str:
  """Run benchmarks/<script> with `flag` (and `extra` flags) and --out=out on one CPU device, as
  users run it; the results file it wrote."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  r = subprocess.run(
    [sys.executable, f"benchmarks/{script}", flag, *extra, f"--out={out}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return out.read_text()


@pytest.mark.slow  # scripts, not behaviour: kept out of CI's 20 minutes (pytest -m slow)
def test_benchmark_script_smoke(tmp_path):
  text = run_script("run.py", "--preset=smoke", tmp_path / "results.md", timeout=600)
  assert "Command: `python benchmarks/run.py --preset=smoke`" in text
  for section in ("### 1. Training", "### 2. Cached greedy decoding", "### 3. Generation vs HF"):
    assert section in text
  for what in ("forward (loss)", "forward + backward", "train step (+ AdamW)"):
    row = next(line for line in text.splitlines() if line.startswith(f"| {what} |"))
    assert re.search(r"\| \d+\.\d+x \|$", row), row  # an HF timing and a ratio, not "-"
  assert cache_ratios(text) == {"MHA": 1.0, "GQA-2": 0.5, "MQA": 0.25}  # tiny: 4 heads
  for search in ("greedy", "4 beams"):  # same tokens as HF, and a timing against it
    row = next(
      line for line in text.splitlines() if line.startswith(f"| {search} | ours (cached, jitted) |")
    )
    assert row.endswith("| True |") and re.search(r"\| \d+\.\d+x \|", row), row


@pytest.mark.slow
def test_llama_benchmark_smoke(tmp_path):
  """benchmarks/llama.py runs; the Llama KV cache of G heads is exactly G/H of MHA's."""
  text = run_script("llama.py", "--smoke", tmp_path / "llama.md", timeout=600)
  assert cache_ratios(text) == {"MHA": 1.0, "GQA-2": 0.5, "MQA": 0.25}  # smoke: 4 heads
  assert re.search(
    r"\| ours \(wgqa_jax.train step, jit, float32\) \| \d+\.\d+ \| \d+\.\d+x \|", text
  ), text


def test_gpu_script_smoke_runs_every_section_on_cpu(tmp_path):
  """benchmarks/gpu.py --preset=smoke (what a session with a GPU runs, shrunk): every section
  written; each attention form agrees with einsum to float32 rounding; cuDNN refused in one
  line on CPU; the offloaded optimizer state trains exactly like the default."""
  text = run_script("gpu.py", "--preset=smoke", tmp_path / "gpu.md", timeout=900)
  for n in range(1, 6):
    assert f"\n## {n}. " in text, n
  section = text.split("\n## 1. ")[1].split("\n## 2. ")[0]
  agree = [line.split("|") for line in section.splitlines() if line.startswith("| tiny")]
  agree += [line.split("|") for line in section.splitlines() if line.startswith("| llama-tiny")]
  errors = [float(c) for cells in agree if "refused" not in cells[3] for c in cells[4:6]]
  assert len(errors) == 12 and max(errors) < 1e-5, agree  # 2 models x 3 forms x (loss, grads)
  assert "refused: model.attention=cudnn: cuDNN flash attention runs on NVIDIA GPUs" in text
  rows = {
    line.split("|")[1].strip(): line.split("|")[-3].strip()
    for line in text.splitlines()
    if line.startswith("| f32 params, AdamW")
  }
  assert rows["f32 params, AdamW, state offloaded"] == rows["f32 params, AdamW (default)"]


def test_serving_script_smoke(tmp_path):
  """benchmarks/serving.py --contexts=512 --reps=1 (about 20 s): every variant served by
  llama.cpp, its KV cache G/H of MHA's (the per-layer budget: GQA-4's total; without flash
  attention its V padded to the largest layer's), a decode rate for each."""
  text = run_script(
    "serving.py", "--contexts=512", tmp_path / "serving.md", timeout=600, extra=("--reps=1",)
  )
  kv = {}
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if len(cells) == 4 and cells[1] in ("on", "off"):
      assert re.fullmatch(r"\d+\.\d \(\d+\.\d\dx\)", cells[2]), line  # a decode rate
      kv[cells[0], cells[1]] = float(re.search(r"\(([\d.]+)x\)", cells[3]).group(1))
  on = {"MHA (16 KV heads)": 1.0, "GQA-8": 0.5, "GQA-4": 0.25, "per-layer 8,4,2,2": 0.25}
  want = {**{(n, "on"): r for n, r in on.items()}, **{(n, "off"): r for n, r in on.items()}}
  want["per-layer 8,4,2,2", "off"] = 0.38  # K at 16 of 64 heads, V padded to 8 per layer: 48
  assert kv == want, text
