"""Launch scripts fail early and clearly when something is missing (no GPU needed)."""

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(script, **env):
  full = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "WORKDIR")}
  full.update(env)
  return subprocess.run(
    ["bash", f"launch/{script}"], cwd=REPO, env=full, capture_output=True, text=True, timeout=60
  )


@pytest.mark.parametrize("script", ["single_gpu.sh", "multi_gpu.sh", "multihost.sh"])
def test_missing_config_or_workdir(script):
  r = run(script)
  assert r.returncode == 2 and "set CONFIG" in r.stderr
  r = run(script, CONFIG="configs/nope.py", WORKDIR="/tmp/x")
  assert r.returncode == 2 and "config file not found: configs/nope.py" in r.stderr
  r = run(script, CONFIG="configs/tiny.py")
  assert r.returncode == 2 and "set WORKDIR" in r.stderr


def test_no_gpu_is_reported():
  r = run("single_gpu.sh", CONFIG="configs/tiny.py", WORKDIR="/tmp/x", PATH="/usr/bin:/bin")
  assert r.returncode == 2
  assert "nvidia-smi not found" in r.stderr or "JAX does not see a GPU" in r.stderr
