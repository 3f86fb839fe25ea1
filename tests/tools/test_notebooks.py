"""Every Colab notebook runs top to bottom, headless, on the offline default (short budget)."""

import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")))


def test_notebooks_are_generated_from_make_notebooks():
  assert len(NOTEBOOKS) == 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch, tmp_path):
  import nbformat
  from nbclient import NotebookClient

  monkeypatch.setenv("WGQA_NOTEBOOK_STEPS", "30")
  monkeypatch.setenv("WGQA_OFFLINE", "1")
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("PYTHONPATH", REPO)
  nb = nbformat.read(path, as_version=4)
  NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()
  errors = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if o.get("output_type") == "error"
  ]
  assert not errors
