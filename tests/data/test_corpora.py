"""Text corpora (wgqa_jax.data.corpora) through their real readers: the Python standard library on
this machine, TFDS text features (a dataset built here by the real TFDS builder) and local JSON
lines / Parquet / text prepared by wgqa_jax.data.corpus_writer into array_record."""

import gzip
import json
import os
import pickle
import subprocess
import sys

import pytest

from wgqa_jax.data import corpora, corpus_writer, local_tfds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_stdlib_corpus_is_real_code_and_prose_with_a_fixed_held_out_part():
  train, val = corpora.PythonStdlib("train"), corpora.PythonStdlib("validation")
  assert len(train) > 500 and 10 < len(val) < len(train) / 20
  assert not set(train.keys) & set(val.keys)
  assert all(corpora.held_out(k) for k in val.keys)
  assert corpora.PythonStdlib("validation").keys == val.keys  # the same on every call
  code = (
    train[train.keys.index("textwrap.py")]
    if "textwrap.py" in train.keys
    else val[val.keys.index("textwrap.py")]
  )
  assert "def wrap(" in code
  topics = [k for k in train.keys + val.keys if k.startswith("topic:")]
  assert len(topics) > 50  # pydoc's help texts: prose
  assert os.path.join("pydoc_data", "topics.py") not in train.keys
  again = pickle.loads(pickle.dumps(train))
  assert again[3] == train[3]


def write_inputs(d):
  with open(d / "a.jsonl", "w") as f:
    for i in range(30):
      f.write(json.dumps({"text": f"json document {i}", "url": "u"}) + "\n")
    f.write("\n")  # blank lines are not documents
  with gzip.open(d / "b.jsonl.gz", "wt") as f:
    f.write(json.dumps({"text": "gzipped document"}) + "\n")
    f.write(json.dumps({"text": "   "}) + "\n")  # empty: skipped
  import pyarrow as pa
  import pyarrow.parquet as pq

  pq.write_table(
    pa.table({"text": [f"parquet document {i}" for i in range(20)]}),
    d / "c.parquet",
    row_group_size=7,
  )
  (d / "d.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n")


def test_prepared_corpus_holds_every_document_once_in_order(tmp_path):
  write_inputs(tmp_path)
  files = corpus_writer.input_files(
    [str(tmp_path / "*.jsonl*"), str(tmp_path / "*.parquet"), str(tmp_path / "d.txt")]
  )
  m = corpus_writer.prepare(
    files,
    str(tmp_path / "corpus"),
    text_unit="paragraph",
    validation_every=10,
    shard_mb=1e-6,
    progress=False,
  )
  expected = (
    [f"json document {i}" for i in range(30)]
    + ["gzipped document"]
    + [f"parquet document {i}" for i in range(20)]
    + ["first paragraph\nstill first", "second paragraph"]
  )
  train = corpora.open_corpus(str(tmp_path / "corpus"), "train")
  val = corpora.open_corpus(str(tmp_path / "corpus"), "validation")
  assert [val[i] for i in range(len(val))] == expected[::10]
  assert [train[i] for i in range(len(train))] == [e for i, e in enumerate(expected) if i % 10]
  assert m["empty_documents_skipped"] == 1
  assert len(m["splits"]["train"]["files"]) > 1  # shard_mb=1e-6: a shard per document
  assert pickle.loads(pickle.dumps(train))[5] == train[5]  # grain workers get a copy


def run_prepare(*args):
  return subprocess.run(
    [sys.executable, "-m", "wgqa_jax.prepare_corpus", *args],
    capture_output=True,
    text=True,
    cwd=REPO,
  )


@pytest.mark.parametrize(
  "case,needle",
  [
    ("missing", "matches no file"),
    ("field", "has no field 'body'; its fields: ['text', 'url']"),
    ("column", "has no column 'body'"),
    ("empty", "a corpus needs at least 2"),
    ("exists", "exists; pass --overwrite"),
    ("format", "unknown format"),
    ("gzip", "cannot read"),
    ("json_number", "a.jsonl:3: 'text' is a JSON number (12345), not a string"),
    ("json_object", "a.jsonl:3: 'text' is a JSON object ({\"nested\": 1}), not a string"),
    ("json_false", "a.jsonl:3: 'text' is a JSON boolean (false), not a string"),
    ("parquet_int", "column 'text' holds int64, not strings"),
    ("parquet_binary", "column 'text' holds binary, not strings"),
    ("parquet_list", "column 'text' holds list<"),
    ("shard_mb", "--shard_mb=0.0: must be positive"),
    ("twice", "is named twice by --input"),
    ("overlap", "is named twice by --input"),
  ],
)
def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, case, needle):
  write_inputs(tmp_path)
  (tmp_path / "blank.txt").write_text("\n\n")
  (tmp_path / "bad.json.gz").write_bytes(b"not gzip at all")
  (tmp_path / "x.csv").write_text("a,b\n")
  import pyarrow as pa
  import pyarrow.parquet as pq

  for kind, column in {
    "int": pa.array([1, 2], pa.int64()),
    "binary": pa.array([b"x", b"y"], pa.binary()),
    "list": pa.array([["x"], ["y"]], pa.list_(pa.string())),
  }.items():
    pq.write_table(pa.table({"text": column}), tmp_path / f"bad_{kind}.parquet")
  value = {"json_number": 12345, "json_object": {"nested": 1}, "json_false": False}.get(case)
  if value is not None:  # the third line of a.jsonl: not a string
    lines = (tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
    lines[2] = json.dumps({"text": value}) + "\n"
    (tmp_path / "a.jsonl").write_text("".join(lines))
  out = tmp_path / "out"
  args = {
    "missing": ["--input=" + str(tmp_path / "nope*.jsonl")],
    "field": ["--input=" + str(tmp_path / "a.jsonl"), "--text_field=body"],
    "column": ["--input=" + str(tmp_path / "c.parquet"), "--text_field=body"],
    "empty": ["--input=" + str(tmp_path / "blank.txt")],
    "exists": ["--input=" + str(tmp_path / "a.jsonl")],
    "format": ["--input=" + str(tmp_path / "x.csv")],
    "gzip": ["--input=" + str(tmp_path / "bad.json.gz")],
    "json_number": ["--input=" + str(tmp_path / "a.jsonl")],
    "json_object": ["--input=" + str(tmp_path / "a.jsonl")],
    "json_false": ["--input=" + str(tmp_path / "a.jsonl")],
    "parquet_int": ["--input=" + str(tmp_path / "bad_int.parquet")],
    "parquet_binary": ["--input=" + str(tmp_path / "bad_binary.parquet")],
    "parquet_list": ["--input=" + str(tmp_path / "bad_list.parquet")],
    "shard_mb": ["--input=" + str(tmp_path / "a.jsonl"), "--shard_mb=0"],
    "twice": ["--input=" + str(tmp_path / "a.jsonl"), "--input=" + str(tmp_path / "a.jsonl")],
    "overlap": ["--input=" + str(tmp_path / "*.jsonl"), "--input=" + str(tmp_path / "a*")],
  }[case]
  if case == "exists":
    out.mkdir()
    (out / "keep").write_text("mine")
  r = run_prepare(*args, f"--out={out}")
  assert r.returncode == 2, r.stderr
  assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
  # (a progress bar cleared by "\r" may share the error's line)
  errors = [l for l in r.stderr.splitlines() if l.split("\r")[-1].startswith("error:")]
  assert len(errors) == 1, r.stderr
  if case == "exists":
    assert os.listdir(out) == ["keep"]
  else:
    assert not out.exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".out.tmp")]


@pytest.mark.parametrize("case", ["out_is_input", "through_a_link", "not_a_corpus", "a_file"])
def test_overwrite_never_destroys_an_input_or_what_is_not_a_corpus(tmp_path, case):
  """--overwrite replaces a prepared corpus and nothing else: not an input file, not a directory
  holding one (seen through a symbolic link), not a directory or file of the user's."""
  write_inputs(tmp_path)
  d2 = tmp_path / "d2"
  d2.mkdir()
  (d2 / "good.jsonl").write_text(json.dumps({"text": "keep me"}) + "\n")
  (tmp_path / "d2link").symlink_to(d2)
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "mine.txt").write_text("mine")
  (tmp_path / "file.txt").write_text("mine")
  a = str(tmp_path / "a.jsonl")
  inputs, out, needle = {
    "out_is_input": ([a], a, "is the input"),
    "through_a_link": ([str(tmp_path / "d2link" / "*.jsonl")], str(d2), "holds the input"),
    "not_a_corpus": ([a], str(tmp_path / "notes"), "is not a prepared corpus"),
    "a_file": ([a], str(tmp_path / "file.txt"), "is a file, not a corpus directory"),
  }[case]
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  r = run_prepare(*[f"--input={i}" for i in inputs], f"--out={out}", "--overwrite")
  assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_second_writer_of_one_corpus_refuses_and_leaves_the_first_alone(tmp_path):
  """Two prepare_corpus runs on one --out: the second refuses in one line, and neither the
  first's lock nor its half-written folder is touched (a real flock held by this process)."""
  from wgqa_jax.core import workdir

  write_inputs(tmp_path)
  out = tmp_path / "corpus"
  first = tmp_path / ".corpus.tmp-999999"  # the first writer's folder, half written
  first.mkdir()
  (first / "train-00000.array_record").write_bytes(b"half")
  with workdir.one_writer(str(tmp_path / ".corpus.lock"), f"writing {out}"):
    r = run_prepare(f"--input={tmp_path / 'a.jsonl'}", f"--out={out}")
    assert r.returncode == 2 and f"is writing {out}" in r.stderr, r.stderr
    assert f"PID {os.getpid()}" in r.stderr and "Traceback" not in r.stderr
    assert (first / "train-00000.array_record").read_bytes() == b"half"
    assert not out.exists()
  assert not (tmp_path / ".corpus.lock").exists()  # released: removed
  r = run_prepare(f"--input={tmp_path / 'a.jsonl'}", f"--out={out}")  # now it may, and cleans up
  assert r.returncode == 0, r.stderr
  assert not first.exists() and len(corpora.open_corpus(str(out), "train")) == 30 - 30 // 200 - 1


def test_overwrite_replaces_a_corpus_whole(tmp_path):
  write_inputs(tmp_path)
  out = str(tmp_path / "corpus")
  corpus_writer.prepare([str(tmp_path / "a.jsonl")], out, progress=False)
  corpus_writer.prepare([str(tmp_path / "c.parquet")], out, overwrite=True, progress=False)
  train = corpora.open_corpus(out, "train")
  assert all(train[i].startswith("parquet") for i in range(len(train)))


def test_a_directory_that_is_not_a_corpus_says_how_to_prepare_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m wgqa_jax.prepare_corpus"):
    corpora.open_corpus(str(tmp_path), "train")
  with pytest.raises(FileNotFoundError, match="no corpus directory"):
    corpora.open_corpus(str(tmp_path / "nope"), "train")


def test_tfds_text_feature_is_read_and_a_missing_one_named(tmp_path):
  local_tfds.build("cnn_dailymail", str(tmp_path), {"train": 12, "validation": 3})
  local_tfds.build("cnn_dailymail", str(tmp_path), {"train": 12, "validation": 3})  # reused
  with pytest.raises(ValueError, match=r"already holds cnn_dailymail with .* not \{'train': 50"):
    local_tfds.build("cnn_dailymail", str(tmp_path), {"train": 50, "validation": 3})
  docs = corpora.open_corpus("tfds:cnn_dailymail", "train", str(tmp_path), "article")
  assert len(docs) == 12 and isinstance(docs[0], str) and len(docs[0].split()) > 20
  with pytest.raises(ValueError, match="no feature 'text'.*'article'"):
    corpora.open_corpus("tfds:cnn_dailymail", "train", str(tmp_path), "text")
