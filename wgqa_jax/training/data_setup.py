"""The data a run trains and evaluates on, from its config: the sources (pairs or a corpus),
the tokenizer (a sentencepiece vocabulary trained on the fly once), the validation rows, the
number of steps, and the rows' layout (wgqa_jax.data.pipeline)."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from wgqa_jax.core import sharding, workdir as workdir_lib
from wgqa_jax.core.errors import UserError
from wgqa_jax.core.processes import first_on_process_0, is_main_process, say
from wgqa_jax.data import corpora, fingerprints, pipeline, span_corruption, tasks, tokenizers
from wgqa_jax.models import preset

# span corruption with a vocabulary trained here: T5's 100 sentinels after the pieces
SENTINELS = 100
CORPUS_SAMPLE_CHARS = 1_000_000  # of a corpus, to train a sentencepiece vocabulary on


def open_sources(c: ml_collections.ConfigDict):
  """(train, validation) sources of (input, target) text pairs, or of documents for the
  pretraining objectives, opened, not read (random access); a missing dataset, file or field
  fails here."""
  d = c.data
  if d.objective != "pairs":
    train = corpora.open_corpus(d.dataset, "train", d.data_dir, d.text_field)
    if d.train_examples is not None:
      train = corpora.Head(train, d.train_examples)
    return train, corpora.open_corpus(d.dataset, "validation", d.data_dir, d.text_field)
  train = tasks.source(d.dataset, "train", d.train_examples, d.data_dir)
  if not d.pack and len(train) < c.optim.batch_size:
    raise UserError(
      f"the training split has {len(train)} examples, fewer than one batch ({c.optim.batch_size})"
    )
  return train, tasks.source(d.dataset, "validation", c.eval.examples, d.data_dir)


def rows_kind(c: ml_collections.ConfigDict) -> str:
  if c.data.objective != "pairs":
    return f"{c.data.objective} rows"
  return "packed rows" if c.data.pack else "examples"


def layout_of(c: ml_collections.ConfigDict) -> pipeline.Layout:
  d = c.data
  return pipeline.Layout(
    c.optim.batch_size,
    d.max_input_length,
    d.max_target_length,
    pack=d.pack,
    pack_window=d.pack_window,
    seed=c.seed,
    objective=d.objective,
    cross_documents=d.cross_documents,
  )


def sentinels_needed(d) -> int:
  """How many sentinel ids span corruption of data config `d`'s rows uses (0: no span
  corruption)."""
  if d.objective != "span_corruption":
    return 0
  return span_corruption.spans_per_row(span_corruption.random_spans_helper(d.max_input_length)[0])


def extra_ids(d) -> int:
  """The sentinels a sentencepiece vocabulary made for data config `d` gets: as many as a row
  can use (T5's 100, or more); none without span corruption."""
  return max(SENTINELS, sentinels_needed(d)) if d.objective == "span_corruption" else 0


def open_tokenizer(c: ml_collections.ConfigDict, workdir: str, train_source=None):
  """The run's tokenizer. A sentencepiece vocabulary is trained once, by process 0, on a
  bounded sample of the training split (train_source); other tokenizers need no data, so they
  are opened (and checked) before the workdir is written. Span corruption needs sentinels, and
  as many as a full row has spans."""
  d = c.data
  needed = sentinels_needed(d)
  extra = extra_ids(d)
  if d.tokenizer == "sentencepiece":
    if train_source is None:
      return None
    # A corpus's sample is documents in a fixed random order, and smaller: sentencepiece's
    # training time grows with the sample and with how varied the text is (4M characters of
    # English-like text: 15 s on 2 cores; 1M: ~4 s), while a few hundred pieces need far less.
    sample = (
      tasks.tokenizer_sample(train_source, max_chars=CORPUS_SAMPLE_CHARS, shuffled=True)
      if d.objective != "pairs"
      else tasks.tokenizer_sample(train_source)
    )
    tokenizer = first_on_process_0(
      lambda: tokenizers.get_tokenizer(
        d.tokenizer,
        workdir,
        sample,
        vocab_size=preset(c.model.arch).vocab_size,
        extra_ids=extra,
      )
    )
  else:
    tokenizer = tokenizers.get_tokenizer(d.tokenizer, workdir, extra_ids=extra)
  if d.objective == "span_corruption":
    _, count = tokenizers.sentinels(tokenizer)
    if count < needed:
      raise UserError(
        f"tokenizer {d.tokenizer!r} has {count} sentinel ids but span "
        f"corruption of {d.max_input_length} inputs needs {needed}"
      )
  return tokenizer


def data_record(c: ml_collections.ConfigDict, train_source, eval_source) -> dict:
  """What the run reads: the dataset and each split's fingerprint (wgqa_jax.data.fingerprints)."""
  return {
    "dataset": c.data.dataset,
    "train": fingerprints.of(train_source),
    "validation": fingerprints.of(eval_source),
  }


def check_data(workdir: str, record: dict, resuming: bool) -> None:
  """A resumed run must read the data the run it continues read: a corpus prepared again at
  the same path, or a shard replaced, is refused in one line (before anything is written).
  A workdir from before the record (none kept) resumes and gets one."""
  path = os.path.join(workdir, workdir_lib.DATA_RECORD)
  saved = workdir_lib.read_json(path) if resuming else None
  if saved is None:
    return
  changed = [s for s in ("train", "validation") if saved.get(s) != record[s]]
  if changed:
    raise UserError(
      f"{workdir} was trained on other data: the {' and '.join(changed)} split"
      f"{'s' if len(changed) > 1 else ''} of {record['dataset']} changed since (prepared again, "
      f"or files replaced; fingerprints in {path}). Resume on the data it started with, or "
      f"pass another --workdir"
    )


def write_data_record(workdir: str, record: dict) -> None:
  path = os.path.join(workdir, workdir_lib.DATA_RECORD)
  if is_main_process() and workdir_lib.read_json(path) != record:
    workdir_lib.write_json(path, record)


def check_tokenizer(workdir: str, tokenizer, resuming: bool) -> None:
  """A resumed run must tokenize exactly as the run it continues: the tokenizer's fingerprint
  is kept in WORKDIR/tokenizer.json and compared (an edited spm.model that still parses would
  otherwise train on other ids)."""
  path = os.path.join(workdir, workdir_lib.TOKENIZER_RECORD)
  now = {
    "tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__),
    "sha256": tokenizers.fingerprint(tokenizer),
  }
  saved = workdir_lib.read_json(path)
  if resuming and saved is not None and saved.get("sha256") != now["sha256"]:
    raise UserError(
      f"{workdir} was trained with another tokenizer than {now['tokenizer']} "
      f"(its fingerprint in {path} differs): resume with the same vocabulary, or "
      f"pass another --workdir"
    )
  if is_main_process() and saved != now:
    workdir_lib.write_json(path, now)


def prepare_data(
  c: ml_collections.ConfigDict, workdir: str, train_source, eval_source, tokenizer=None
):
  """(tokenizer, validation data, total train steps). The validation data: the tokenized split
  (pairs), or the objective's rows of the first eval.examples held-out documents."""
  d = c.data
  tokenizer = tokenizer or open_tokenizer(c, workdir, train_source)
  layout = layout_of(c)
  if layout.documents:
    eval_split = pipeline.eval_rows(
      eval_source, tokenizer, layout, c.eval.examples, c.eval.max_rows
    )
    if pipeline.num_rows(eval_split) == c.eval.max_rows:
      say(
        f"eval: the first {c.eval.max_rows} rows of the held-out documents "
        f"(config.eval.max_rows bounds every eval)"
      )
  else:
    eval_split = pipeline.eval_split(
      eval_source, tokenizer, d.max_input_length, d.max_target_length
    )
  total_steps = c.optim.num_train_steps
  if not total_steps:  # packed or documents: an epoch's rows are estimated from the first window
    rows = len(train_source) * pipeline.rows_per_example(train_source, tokenizer, layout)
    total_steps = max(1, int(c.optim.num_epochs * (int(rows) // c.optim.batch_size)))
  return tokenizer, eval_split, total_steps


def data_state(batches: pipeline.TrainBatches) -> dict:
  """Every process's input position, for the checkpoint (a collective on multi-host)."""
  positions = sharding.gather_rows(np.asarray(batches.position, np.int32))
  return {"process_count": jax.process_count(), "positions": positions.tolist()}
