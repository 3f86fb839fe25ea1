"""Damaged or wrong user input, injected for real at each boundary where it is read, gives one
line and exit 2 (never a traceback), and writes nothing."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import V10, make_hf_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(module, *args):
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, "XLA_FLAGS": ""},
  )


def one_line(r, needle):
  assert r.returncode == 2, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.strip() and "it/s]" not in l]
  assert "Traceback" not in r.stderr and len(lines) == 1 and needle in lines[0], r.stderr[-3000:]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("hf") / "t5"
  make_hf_model({**V10, "vocab_size": 260}).save_pretrained(str(d))
  return d


def variant_of(hf_dir, tmp_path, name, edit):
  d = tmp_path / name
  shutil.copytree(hf_dir, d)
  edit(d)
  return d


def test_hf_checkpoints_that_cannot_be_used_are_named(hf_dir, tmp_path):
  def config(value):
    return lambda d: (d / "config.json").write_text(json.dumps(value))

  base = json.loads((hf_dir / "config.json").read_text())

  def evil_bin(d):
    import torch

    class Evil:
      def __reduce__(self):
        return (os.system, (f"touch {tmp_path / 'pwned'}",))

    os.remove(d / "model.safetensors")
    torch.save({"x": Evil()}, d / "pytorch_model.bin")

  def truncated(d):
    with open(d / "model.safetensors", "r+b") as f:
      f.truncate(os.path.getsize(d / "model.safetensors") // 2)

  cases = {
    "list": (config([1, 2]), "config.json holds a JSON list"),
    "nokey": (
      config({k: v for k, v in base.items() if k != "d_model"}),
      "has no 'd_model', which a T5 config needs",
    ),
    "gpt2": (config({**base, "model_type": "gpt2"}), "is not a family wgqa_jax has"),
    "bin": (evil_bin, "could run code"),
    "truncated": (truncated, "runs past the end of the file"),
  }
  for name, (edit, needle) in cases.items():
    d = variant_of(hf_dir, tmp_path, name, edit)
    one_line(run("wgqa_jax.convert", f"--hf={d}", f"--out={tmp_path / ('out_' + name)}"), needle)
    assert not (tmp_path / ("out_" + name)).exists()
  assert not (tmp_path / "pwned").exists()  # refused, not executed


def test_a_missing_config_file_with_overrides_is_one_line(tmp_path):
  one_line(
    run(
      "wgqa_jax.train",
      "--config=configs/nope.py",
      "--config.optim.batch_size=3",
      f"--workdir={tmp_path / 'w'}",
    ),
    "No such file or directory",
  )
  assert not (tmp_path / "w").exists()


def test_evaluate_names_an_unknown_split_and_a_workdir_without_params(hf_dir, tmp_path):
  one_line(
    run("wgqa_jax.evaluate", f"--checkpoint={hf_dir}", "--split=bogus", "--tokenizer=bytes"),
    "unknown split 'bogus'",
  )
  w = tmp_path / "run"
  w.mkdir()
  (w / "config.json").write_text("{}")
  (w / "metrics.jsonl").write_text("")
  one_line(
    run("wgqa_jax.evaluate", f"--checkpoint={w}", "--tokenizer=bytes"),
    "a training workdir with no best/ or final/ yet",
  )


def test_a_damaged_corpus_shard_and_sentencepiece_model_are_named(tmp_path):
  from wgqa_jax.data import corpus_writer

  (tmp_path / "a.jsonl").write_text(
    "".join(json.dumps({"text": f"document {i} " * 30}) + "\n" for i in range(400))
  )
  corpus_writer.prepare([str(tmp_path / "a.jsonl")], str(tmp_path / "corpus"), progress=False)
  shard = tmp_path / "corpus" / "train-00000.array_record"
  with open(shard, "r+b") as f:
    f.seek(os.path.getsize(shard) // 2)
    f.write(os.urandom(4096))
  one_line(
    run(
      "wgqa_jax.train",
      "--config=configs/llama_uptrain.py:tiny",
      f"--config.data.dataset={tmp_path / 'corpus'}",
      "--config.data.tokenizer=bytes",
      f"--workdir={tmp_path / 'w'}",
    ),
    "is damaged",
  )
  assert not (tmp_path / "w").exists()
  spm = tmp_path / "spm.model"
  spm.write_bytes(b"\x0a\x05garbage that is not a model proto" * 10)
  one_line(
    run(
      "wgqa_jax.train",
      "--config=configs/tiny.py",
      f"--config.data.tokenizer={spm}",
      f"--workdir={tmp_path / 'w2'}",
    ),
    "cannot read the sentencepiece model",
  )
  assert not (tmp_path / "w2").exists()


def test_a_damaged_init_from_fails_before_the_workdir_is_written(hf_dir, tmp_path):
  def truncated(d):
    with open(d / "model.safetensors", "r+b") as f:
      f.truncate(os.path.getsize(d / "model.safetensors") - 100)

  d = variant_of(hf_dir, tmp_path, "truncated", truncated)
  one_line(
    run(
      "wgqa_jax.train",
      "--config=configs/tiny.py",
      f"--config.model.init_from={d}",
      "--config.data.tokenizer=sentencepiece",
      f"--workdir={tmp_path / 'w'}",
    ),
    "runs past the end of the file",
  )
  assert not (tmp_path / "w").exists()  # no config.json, no spm.model


INJECT = """
import sys
from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.lab import convert as library
from wgqa_jax.tools import convert

def broken(*args, **kwargs):
  raise {error}("an injected fault")

library.convert = broken  # the library call the command makes once its input is read
cli.run(convert.main, convert.FLAGS)
"""


@pytest.mark.parametrize(
  "error, code",
  [("KeyError", 1), ("ValueError", 1), ("ImportError", 1), ("TypeError", 1), ("UserError", 2)],
)
def test_a_bug_is_a_crash_with_its_traceback_and_only_bad_input_is_one_line(tmp_path, error, code):
  """An internal KeyError / ValueError / ImportError is a bug: exit 1 and its traceback, not a
  user error's one line (only UserError, the project's own, is exit 2)."""
  import jax

  from wgqa_jax.models import preset
  from wgqa_jax.models.family import family_of
  from wgqa_jax.store import params_io

  cfg = preset("tiny")
  params_io.save(
    family_of(cfg).init_params(cfg, jax.random.PRNGKey(0)), cfg, str(tmp_path / "params")
  )
  r = subprocess.run(
    [
      sys.executable,
      "-c",
      INJECT.format(error=error),
      f"--params={tmp_path / 'params'}",
      "--variant=gqa",
      "--kv_heads=2",
      f"--out={tmp_path / 'out'}",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, "XLA_FLAGS": ""},
  )
  assert r.returncode == code, r.stderr[-3000:]
  if code == 1:
    assert "Traceback" in r.stderr and f"{error}: " in r.stderr and "broken" in r.stderr
  else:
    one_line(r, "an injected fault")
  assert not (tmp_path / "out").exists()


def test_a_place_that_cannot_be_written_is_one_line_naming_it(tmp_path):
  """/sys refuses new entries even to root: the real EPERM, from three command lines."""
  (tmp_path / "a.jsonl").write_text(
    "".join(json.dumps({"text": f"d {i}"}) + "\n" for i in range(9))
  )
  for module, args in [
    ("wgqa_jax.prepare_corpus", [f"--input={tmp_path / 'a.jsonl'}", "--out=/sys/wgqa_jax_corpus"]),
    ("wgqa_jax.train", ["--config=configs/tiny.py", "--workdir=/sys/wgqa_jax_run"]),
  ]:
    one_line(run(module, *args), "/sys/")


def test_evaluate_never_decodes_with_a_tokenizer_the_checkpoint_was_not_trained_with(
  hf_dir, tmp_path
):
  """An HF directory without tokenizer files (and no run config) is not decoded with bytes by
  default; a tokenizer whose ids or EOS do not fit the model is refused (T5 with EOS 1 and
  260 embeddings fits the byte tokenizer's 259 ids; 97 embeddings do not)."""
  from wgqa_jax.tools import evaluate

  with pytest.raises(ValueError, match="has no run config and no tokenizer files: pass --token"):
    evaluate.main([f"--checkpoint={hf_dir}", f"--out={tmp_path / 'a.json'}"])
  small = tmp_path / "small"
  make_hf_model(V10).save_pretrained(str(small))
  with pytest.raises(ValueError, match=r"tokenizer 'bytes' \(259 ids, EOS 1\) does not fit"):
    evaluate.main([f"--checkpoint={small}", "--tokenizer=bytes", f"--out={tmp_path / 'b.json'}"])
  assert not list(tmp_path.glob("*.json"))


def test_a_sharded_checkpoint_missing_a_shard_or_with_a_torn_index_is_one_line(tmp_path):
  """A partly copied or downloaded HF directory: its index names a shard that is not there,
  or the index itself is cut short."""
  from wgqa_jax.tools import convert

  d = tmp_path / "hf"
  make_hf_model(V10).save_pretrained(str(d), max_shard_size="20KB")
  index = d / "model.safetensors.index.json"
  shards = sorted(p.name for p in d.glob("model-*.safetensors"))
  assert index.exists() and len(shards) > 1
  (d / shards[-1]).unlink()
  with pytest.raises(FileNotFoundError, match=f"is incomplete: .* names {shards[-1]}"):
    convert.main([f"--hf={d}", f"--out={tmp_path / 'out'}"])
  index.write_text(index.read_text()[:40])
  with pytest.raises(ValueError, match="is not a shard index"):
    convert.main([f"--hf={d}", f"--out={tmp_path / 'out'}"])
  assert not (tmp_path / "out").exists()


WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # as if torch were not installed: importing it raises ImportError
from wgqa_jax.core import cli
from wgqa_jax.tools import convert
cli.run(convert.main, convert.FLAGS)
"""


def test_a_gguf_export_without_its_engine_names_the_install_and_writes_nothing(hf_dir, tmp_path):
  """Before anything is loaded or written: a missing converter dependency names the extra to
  install; a converter directory that holds none is named."""
  out = tmp_path / "m.gguf"
  args = [f"--hf={hf_dir}", "--export=gguf", f"--export_to={out}"]
  r = subprocess.run(
    [sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True, cwd=REPO,
    env={**os.environ, "XLA_FLAGS": ""},
  )  # fmt: skip
  one_line(r, "pip install 'wgqa_jax[engines]'")
  empty = tmp_path / "converter"
  empty.mkdir()
  r = subprocess.run(
    [sys.executable, "-m", "wgqa_jax.convert", *args], capture_output=True, text=True, cwd=REPO,
    env={**os.environ, "XLA_FLAGS": "", "WGQA_LLAMA_CPP_CONVERTER": str(empty)},
  )  # fmt: skip
  one_line(r, "holds no convert_hf_to_gguf.py")
  assert sorted(os.listdir(tmp_path)) == ["converter"]
