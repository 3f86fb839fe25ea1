"""A run reads the data it started with, or stops in one line (faults injected for real: a corpus
prepared again at its path, a shard replaced, a manifest naming files outside its corpus, a shard
garbled under a running grain worker)."""

import json
import os
import shutil

import pytest
from conftest import run_train

from wgqa_jax.core import errors
from wgqa_jax.data import corpora, corpus_writer, local_tfds
from wgqa_jax.training import trainer
from wgqa_jax.training.config import base_config


def prepare(tmp_path, out, word, n=120, overwrite=False):
  src = tmp_path / f"{word}.jsonl"
  src.write_text(
    "".join(json.dumps({"text": f"{word} {i} " * (20 + i % 7)}) + "\n" for i in range(n))
  )
  corpus_writer.prepare(
    [str(src)], str(out), validation_every=20, overwrite=overwrite, progress=False
  )


def causal(dataset, **flat):
  c = base_config()
  c.update_from_flattened_dict(
    {
      "model.arch": "llama-tiny",
      "data.objective": "causal_lm",
      "data.dataset": str(dataset),
      "data.tokenizer": "bytes",
      "data.max_input_length": 32,
      "data.pack_window": 8,
      "data.workers": 0,
      "optim.batch_size": 4,
      "optim.num_epochs": 0,
      "optim.num_train_steps": 12,
      "optim.warmup_steps": 2,
      "log_every": 4,
      "eval.every": 0,
      "eval.examples": 2,
      "eval.batch_size": 4,
      "checkpoint.every": 4,
      "mesh.data": 1,
      **flat,
    }
  )
  return c


def test_a_corpus_changed_under_a_run_is_refused_on_resume_and_the_same_text_is_not(tmp_path):
  corpus, w = tmp_path / "corpus", str(tmp_path / "w")
  prepare(tmp_path, corpus, "alpha")
  c = causal(corpus)
  with pytest.raises(trainer.Preempted):
    trainer.train(c, w, stop_after=4)
  record = (tmp_path / "w" / "data.json").read_bytes()

  def refused(needle):
    with pytest.raises(errors.UserError, match=needle):
      trainer.train(c, w)
    assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["4"]
    assert (tmp_path / "w" / "data.json").read_bytes() == record

  prepare(tmp_path, corpus, "beta", overwrite=True)  # other documents at the same path
  refused("trained on other data: the train and validation splits of .* changed since")
  prepare(tmp_path, corpus, "alpha", overwrite=True)  # the same text again: the same corpus
  other = tmp_path / "other"
  prepare(tmp_path, other, "gamma")  # one shard put in place of another
  shutil.copy(other / "train-00000.array_record", corpus / "train-00000.array_record")
  refused("the train split of .* changed since")
  prepare(tmp_path, corpus, "alpha", overwrite=True)
  last = trainer.train(c, w)  # the same corpus prepared again resumes
  assert last["step"] == 12


def test_a_manifest_naming_files_outside_its_corpus_is_refused(tmp_path):
  corpus = tmp_path / "corpus"
  prepare(tmp_path, corpus, "alpha")
  (tmp_path / "secret.array_record").write_bytes(b"not yours")
  manifest = json.loads((corpus / "corpus.json").read_text())
  manifest["splits"]["train"]["files"] = ["../secret.array_record"]
  (corpus / "corpus.json").write_text(json.dumps(manifest))
  with pytest.raises(errors.UserError, match=r"names the train shard '../secret.array_record'"):
    corpora.open_corpus(str(corpus), "train")


def test_a_shard_damaged_mid_run_stops_like_a_full_disk_naming_the_last_good_checkpoint(
  tmp_path,
):
  """A TFDS split garbled before the run, read by a grain worker process only once training is
  under way (nothing reads the train split at start-up): exit 65, one line, the checkpoints
  saved before it kept and named."""
  data_dir = tmp_path / "tfds"
  d = local_tfds.build("cnn_dailymail", str(data_dir), {"train": 300, "validation": 4})
  shard = next(os.path.join(d, f) for f in os.listdir(d) if "-train.array_record" in f)
  with open(shard, "r+b") as f:
    f.seek(os.path.getsize(shard) // 2)
    f.write(os.urandom(8192))
  w = tmp_path / "w"
  r = run_train(
    "--config=configs/tiny.py",
    "--config.data.dataset=cnn_dailymail",
    f"--config.data.data_dir={data_dir}",
    "--config.data.tokenizer=bytes",
    "--config.data.workers=1",
    "--config.data.max_input_length=64",
    "--config.data.max_target_length=16",
    "--config.optim.batch_size=4",
    "--config.optim.num_train_steps=40",
    "--config.eval.every=0",
    "--config.eval.examples=4",
    "--config.checkpoint.every=3",
    f"--workdir={w}",
  )
  assert r.returncode == errors.EXIT_DATA_ERROR, r.stderr[-3000:]
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  [line] = [l for l in r.stderr.splitlines() if l.split("\r")[-1].startswith("damaged data:")]
  kept = sorted(int(s) for s in os.listdir(w / "checkpoints") if s.isdigit())
  assert kept and f"its last good checkpoint is step {kept[-1]}" in line, (line, kept)
  assert "is damaged (Corrupted" in line and not (w / "final").exists()


def test_a_damaged_data_error_that_a_worker_library_retyped_is_still_recognised():
  """grain may re-raise a worker's error as RuntimeError("INTERNAL: ValueError: <message>")."""
  from wgqa_jax.data import pipeline
  from wgqa_jax.data.tokenizers import get_tokenizer

  class Source:
    def __len__(self):
      return 16

    def __getitem__(self, i):
      raise RuntimeError(
        "INTERNAL: ValueError: TFDS 'x': example 3 is damaged (bad chunk); prepare the "
        "dataset again"
      )

  layout = pipeline.Layout(4, 16, 8)
  batches = pipeline.TrainBatches(Source(), get_tokenizer("bytes", None), layout)
  with pytest.raises(errors.DamagedData, match=r"^TFDS 'x': example 3 is damaged \(bad chunk\)"):
    next(batches)


def test_a_per_module_kv_allocation_is_kept_for_the_resume(tmp_path, monkeypatch):
  """layer_budget=proxy: the allocation the run started with is the run's. A resume whose
  derivation would now fall the other way (a near tie on other hardware; here the derivation
  is replaced by one that reverses it) resumes with the kept one: no quarantine, the same G."""
  from builders import proxy_budget

  from wgqa_jax.grouping import kv_budget
  from wgqa_jax.store import params_io

  c = proxy_budget(num_train_steps=4, **{"checkpoint.every": 2})
  w = tmp_path / "w"
  with pytest.raises(trainer.Preempted):
    trainer.train(c, str(w), stop_after=2)
  kept = json.loads((w / "kv_allocation.json").read_text())
  assert len(set(kept.values())) > 1
  derive = kv_budget.by_proxy
  monkeypatch.setattr(
    kv_budget,
    "by_proxy",
    lambda *a, **k: dict(zip(derive(*a, **k), reversed(list(derive(*a, **k).values())))),
  )
  trainer.train(c, str(w))
  assert not (w / "checkpoints_quarantine").exists()
  assert dict(params_io.load(str(w / "final"))[1].grouping.module_kv_heads) == kept
  (w / "kv_allocation.json").write_text('{"decoder/layers_0/self_attention": 9}')
  with pytest.raises(errors.UserError, match="does not hold a KV allocation"):
    trainer.train(c, str(w))
  # a workdir from before the file, whose allocation is now derived otherwise: its checkpoints
  # hold another model, said in one line, and are not quarantined as damaged
  (w / "kv_allocation.json").unlink()
  saved = sorted(os.listdir(w / "checkpoints"))
  with pytest.raises(errors.UserError, match=r"holds another model than this run builds \(params"):
    trainer.train(c, str(w))
  assert sorted(os.listdir(w / "checkpoints")) == saved
  assert not (w / "checkpoints_quarantine").exists()
