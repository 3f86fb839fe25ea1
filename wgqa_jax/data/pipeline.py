"""The input pipeline: grain over a random-access source of (input text, target text) pairs,
or of documents (wgqa_jax.data.corpora) for the pretraining objectives (wgqa_jax.data.text_rows).

Training (`TrainBatches`), for process i of n with global batch B (b = B / n rows per process):

  source (wgqa_jax.data: TFDS array_record reader or a generated task)
    -> shuffle(seed), repeat           grain: a lazy index permutation per epoch, O(1) memory
    -> ProcessShard(chunk, i, n)       this process's positions of the global example stream
    -> map(Tokenize)                   on the fly, truncated, EOS-terminated
    -> batch(W) -> map(MakeRows)       a window of W examples -> rows: padded, or packed
    -> grain threads / worker processes, prefetched
    -> rows cut into batches of b      (in this process)

Unpacked, W = b: window w of process i is exactly its rows of global batch w, so the global batch
of a step does not depend on the process count. Packed (T5X style), each window's examples are
packed first-fit into rows of (max_input_length, max_target_length) with segment ids and
positions; a window gives a varying number of rows. Either way the position of the next batch is
(window, row): two integers per process, saved with the model (wgqa_jax.store.checkpoints), so a
resumed run reads exactly the batches the uninterrupted one would have.

Documents (objective span_corruption or causal_lm) flow the same way, one window of
`pack_window` documents at a time: TokenizeDocument, then the objective's rows (a window gives a
varying number of full rows, as packed pairs do, with the same (window, row) position).

Eval (`eval_split`) reads the split in order through the same Tokenize, unpacked; for documents,
`eval_rows` makes the objective's rows of the first documents of the validation split.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np
from absl import flags

from wgqa_jax.core.errors import DamagedData, UserError
from wgqa_jax.data import text_rows

# Examples packed together. Bigger windows pack tighter (first-fit has more rows to choose from);
# a window is one unit of work for a grain worker.
PACK_WINDOW = 512


def truncate(ids, length: int, eos_id: int) -> np.ndarray:
  """At most length - 1 ids, then EOS (T5's convention: the EOS is always kept)."""
  return np.asarray(list(ids[: length - 1]) + [eos_id], np.int32)


@dataclasses.dataclass(frozen=True)
class Tokenize(grain.transforms.Map):
  """(input text, target text) -> (input ids, target ids), unpadded int32, EOS-terminated; the
  input starts with the tokenizer's prefix (a decoder-only model's BOS; none for T5)."""

  tokenizer: Any
  max_input_length: int
  max_target_length: int

  def map(self, pair):
    source, target = pair
    eos = self.tokenizer.eos_id
    prefix = list(self.tokenizer.prefix)
    return (
      truncate(prefix + self.tokenizer.encode(source), self.max_input_length, eos),
      truncate(self.tokenizer.encode(target), self.max_target_length, eos),
    )


def pad_rows(examples, max_input_length: int, max_target_length: int, pad_id: int) -> dict:
  """One example per row: {"inputs", "targets"} (rows, length), pad_id-padded."""
  inputs = np.full((len(examples), max_input_length), pad_id, np.int32)
  targets = np.full((len(examples), max_target_length), pad_id, np.int32)
  for r, (inp, tgt) in enumerate(examples):
    inputs[r, : len(inp)], targets[r, : len(tgt)] = inp, tgt
  return {"inputs": inputs, "targets": targets}


def pack_rows(examples, max_input_length: int, max_target_length: int, pad_id: int) -> dict:
  """Examples packed first-fit, in order, into rows where both their inputs and their targets
  fit. Adds {inputs,targets}_segment_ids (1, 2, ... per example in a row; 0 on padding) and
  {inputs,targets}_positions (0.. within each example), as T5X's packed features."""
  n = len(examples)
  free = np.empty((n, 2), np.int64)  # per row: room left for inputs, targets
  placed = []  # per row: its examples
  for ex in examples:
    need = (len(ex[0]), len(ex[1]))
    fits = np.flatnonzero((free[: len(placed), 0] >= need[0]) & (free[: len(placed), 1] >= need[1]))
    if len(fits):
      row = int(fits[0])
    else:
      row = len(placed)
      placed.append([])
      free[row] = (max_input_length, max_target_length)
    placed[row].append(ex)
    free[row] -= need
  out = {
    k: np.full((len(placed), length), pad_id if k in ("inputs", "targets") else 0, np.int32)
    for k, length in (
      ("inputs", max_input_length),
      ("targets", max_target_length),
      ("inputs_segment_ids", max_input_length),
      ("targets_segment_ids", max_target_length),
      ("inputs_positions", max_input_length),
      ("targets_positions", max_target_length),
    )
  }
  for side, j in (("inputs", 0), ("targets", 1)):
    for r, row in enumerate(placed):
      start = 0
      for seg, ex in enumerate(row, start=1):
        end = start + len(ex[j])
        out[side][r, start:end] = ex[j]
        out[f"{side}_segment_ids"][r, start:end] = seg
        out[f"{side}_positions"][r, start:end] = np.arange(len(ex[j]))
        start = end
  return out


@dataclasses.dataclass(frozen=True)
class MakeRows(grain.transforms.Map):
  """A window (list) of tokenized examples -> rows, packed or one example per row."""

  max_input_length: int
  max_target_length: int
  pad_id: int
  pack: bool

  def map(self, examples):
    make = pack_rows if self.pack else pad_rows
    return make(examples, self.max_input_length, self.max_target_length, self.pad_id)


class ProcessShard(grain.MapDataset):
  """Process `index` of `count`'s share of a stream: the stream is cut into chunks of `chunk`
  consecutive positions, dealt to the processes in turn. With chunk = b rows per process this
  process's k-th element is its row k % b of global batch k // b."""

  def __init__(self, parent: grain.MapDataset, chunk: int, index: int, count: int):
    super().__init__(parent)
    self.chunk, self.index, self.count = chunk, index, count

  def __len__(self) -> int:
    return len(self._parent) // self.count

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    c = self.chunk
    return self._parent[(k // c) * c * self.count + self.index * c + k % c]

  def __str__(self) -> str:
    return f"ProcessShard(chunk={self.chunk}, index={self.index}, count={self.count})"


@dataclasses.dataclass(frozen=True)
class Layout:
  """What shapes the training batches (every process must agree)."""

  global_batch: int
  max_input_length: int
  max_target_length: int
  pack: bool = False
  pack_window: int = PACK_WINDOW
  seed: int = 0
  objective: str = "pairs"  # wgqa_jax.data.text_rows.OBJECTIVES
  cross_documents: bool = False  # causal_lm: attention may cross document boundaries

  @property
  def documents(self) -> bool:
    """Rows are made from documents (a pretraining objective), not (input, target) pairs."""
    return self.objective != "pairs"

  @property
  def variable_rows(self) -> bool:
    """A window gives a varying number of rows (packed pairs, or documents)."""
    return self.pack or self.documents

  def rows_per_process(self, process_count: int) -> int:
    if self.global_batch % process_count:
      raise UserError(
        f"global batch {self.global_batch} is not divisible by the {process_count} processes"
      )
    return self.global_batch // process_count

  def window(self, process_count: int) -> int:
    """Examples per window: a process's rows of one global batch, or the packing window."""
    return self.pack_window if self.variable_rows else self.rows_per_process(process_count)


def transforms(tokenizer, layout: Layout) -> tuple:
  """(per-example tokenize transform, window -> rows transform) of the layout's objective."""
  if layout.objective == "pairs":
    return (
      Tokenize(tokenizer, layout.max_input_length, layout.max_target_length),
      MakeRows(layout.max_input_length, layout.max_target_length, tokenizer.pad_id, layout.pack),
    )
  if layout.objective == "span_corruption":
    from wgqa_jax.data import tokenizers

    first, _ = tokenizers.sentinels(tokenizer)
    return (
      text_rows.TokenizeDocument(tokenizer, delimit=False),
      text_rows.SpanCorruptionRows(
        layout.max_input_length, layout.max_target_length, first, tokenizer.eos_id, tokenizer.pad_id
      ),
    )
  if layout.objective == "causal_lm":
    return (
      text_rows.TokenizeDocument(tokenizer, delimit=True),
      text_rows.CausalLMRows(
        layout.max_input_length + layout.max_target_length, tokenizer.pad_id, layout.cross_documents
      ),
    )
  raise ValueError(f"unknown objective {layout.objective!r}; choose from {text_rows.OBJECTIVES}")


def _rows_of(ds, make_rows, seed: int):
  """ds.map(make_rows), or random_map for a transform that draws (seeded by window index)."""
  if isinstance(make_rows, grain.transforms.RandomMap):
    return ds.random_map(make_rows, seed=seed)
  return ds.map(make_rows)


def num_rows(rows: dict) -> int:
  return len(next(iter(rows.values())))


def windows(source, tokenizer, layout: Layout, process_index: int = 0, process_count: int = 1):
  """grain MapDataset: window w -> this process's rows made from its w-th window of examples."""
  if len(source) == 0:
    raise UserError("the training split is empty")
  w = layout.window(process_count)
  tokenize, make_rows = transforms(tokenizer, layout)
  ds = (
    grain.MapDataset.source(source)
    .shuffle(seed=layout.seed)  # a new permutation each epoch (grain mixes in the epoch)
    .repeat(None)
    .pipe(ProcessShard, chunk=w, index=process_index, count=process_count)
    .map(tokenize)
    .batch(w, batch_fn=list)
  )
  # each process draws its own windows' randomness
  return _rows_of(ds, make_rows, layout.seed * 1_000_003 + process_index)


def rows_per_example(source, tokenizer, layout: Layout) -> float:
  """Rows per example (or document) in the first window (1.0 unpacked): sizes an epoch in
  steps."""
  if not layout.variable_rows:
    return 1.0
  rows = windows(source, tokenizer, layout)[0]
  if layout.documents:
    return num_rows(rows) / layout.pack_window  # the repeated stream fills every window
  return num_rows(rows) / float(rows["targets_segment_ids"].max(axis=1).sum())


class TrainBatches:
  """This process's training batches (dicts of (b, length) int32 arrays), forever, with a
  resumable position: (window, row) of the next row.

  workers: grain worker processes that tokenize and pack (0: threads of this process);
  position: where to start, e.g. a checkpoint's `position` (default: the beginning)."""

  def __init__(
    self,
    source,
    tokenizer,
    layout: Layout,
    process_index: int = 0,
    process_count: int = 1,
    position: tuple[int, int] = (0, 0),
    workers: int = 0,
    prefetch: int = 8,
  ):
    if not flags.FLAGS.is_parsed():  # grain reads its options from absl's global flags
      flags.FLAGS.mark_as_parsed()
    self.rows_per_batch = layout.rows_per_process(process_count)
    self.window, self.row = (int(p) for p in position)
    ds = windows(source, tokenizer, layout, process_index, process_count)[self.window :]
    it = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=max(1, min(prefetch, 4)), prefetch_buffer_size=prefetch)
    )
    if workers > 0:
      it = it.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
      )
    self._iter = iter(it)
    self._rows: dict | None = None

  @property
  def position(self) -> tuple[int, int]:
    """(window, row) of the next row this iterator yields."""
    return self.window, self.row

  def _next_window(self) -> dict:
    try:
      return next(self._iter)
    except DamagedData:
      raise
    except Exception as e:  # a worker's DamagedData may come back as another type
      damaged = DamagedData.within(e)
      if damaged is None:
        raise
      raise damaged from None

  def _current(self) -> dict:
    if self._rows is None:
      self._rows = self._next_window()  # window self.window: the iterator starts there
    while self.row >= num_rows(self._rows):  # a start position past a window's end
      self.window, self.row, self._rows = self.window + 1, 0, self._next_window()
    return self._rows

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts, need = [], self.rows_per_batch
    while need:
      rows = self._current()
      take = min(need, num_rows(rows) - self.row)
      parts.append({k: v[self.row : self.row + take] for k, v in rows.items()})
      self.row += take
      need -= take
    if self.row == num_rows(rows):  # window used up: the position names the next one
      self.window, self.row, self._rows = self.window + 1, 0, None
    return {
      k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]
    }

  def close(self) -> None:
    close = getattr(self._iter, "close", None)
    if close is not None:
      close()


def resume_position(
  saved: dict | None, step: int, layout: Layout, process_index: int, process_count: int
) -> tuple[tuple[int, int], str | None]:
  """Where process `process_index` starts after a checkpoint at `step` whose data state is
  `saved` ({"process_count": n, "positions": [[window, row], ...]} or None): (position, a
  warning or None). Exact unless a packed run resumes on another process count."""
  if saved is None or not layout.variable_rows:
    # unpacked: window w is global batch w on any process count
    return (step, 0), None
  if saved["process_count"] == process_count:
    return tuple(saved["positions"][process_index]), None
  # variable rows, other process count: restart every process at the window that covers the same
  # global examples as the slowest old process; examples of its partly used window repeat.
  old = saved["process_count"]
  window = min(w for w, _ in saved["positions"]) * old // process_count
  return (window, 0), (
    f"the run resumes on {process_count} processes instead of {old}: "
    f"the data order restarts at window {window}, so up to "
    f"{layout.pack_window * old} examples repeat; the batches differ from "
    f"the uninterrupted run's"
  )


# ----------------------------------------------------------------------------------------------
# Eval: exact, ordered, unpacked
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TokenizedSplit:
  inputs: np.ndarray  # (n, max_input_length) int32, 0-padded, EOS-terminated
  targets: np.ndarray  # (n, max_target_length)
  texts: list[tuple[str, str]]

  def __len__(self):
    return len(self.inputs)


def eval_split(
  source, tokenizer, max_input_length: int, max_target_length: int, threads: int = 4
) -> TokenizedSplit:
  """Every example of `source` in order, tokenized by the training pipeline's Tokenize."""
  texts = list(source)
  ds = grain.MapDataset.source(texts).map(Tokenize(tokenizer, max_input_length, max_target_length))
  examples = list(
    ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=64))
  )
  rows = pad_rows(examples, max_input_length, max_target_length, tokenizer.pad_id)
  return TokenizedSplit(rows["inputs"], rows["targets"], texts)


def eval_batches(split: TokenizedSplit, batch_size: int):
  """Fixed-size batches over the whole split; the last one is padded (weight 0 rows)."""
  n = len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    yield {"inputs": split.inputs[idx], "targets": split.targets[idx], "valid": valid}


def padding_fraction(batch: dict, pad_id: int = 0) -> float:
  """Share of the batch's token positions (inputs and targets, or a causal row) that hold no
  token."""
  if "tokens" in batch:
    return float((batch["segment_ids"] == 0).mean())
  cells = batch["inputs"].size + batch["targets"].size
  tokens = (batch["inputs"] != pad_id).sum() + (batch["targets"] != pad_id).sum()
  return float(1.0 - tokens / cells)


def eval_rows(
  source, tokenizer, layout: Layout, documents: int, max_rows: int | None = None, threads: int = 4
) -> dict:
  """The objective's rows of the first `documents` documents of `source`, in order, with a
  fixed seed: the same held-out rows at every eval and on every run; at most the first
  `max_rows` of them (a few huge documents would otherwise make every eval huge)."""
  n = min(documents, len(source))
  tokenize, make_rows = transforms(tokenizer, layout)
  ds = _rows_of(
    grain.MapDataset.source(source)[:n].map(tokenize).batch(layout.pack_window, batch_fn=list),
    make_rows,
    seed=0,
  )
  parts, rows = [], 0
  for part in ds.to_iter_dataset(
    grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)
  ):
    parts.append(part)
    rows += num_rows(part)
    if max_rows is not None and rows >= max_rows:
      break  # the windows after it are not read
  return {k: np.concatenate([p[k] for p in parts])[:max_rows] for k in parts[0]}


def eval_row_batches(rows: dict, batch_size: int, pad_id: int):
  """Fixed-size batches over every row; the last is filled with all-padding rows (which weigh
  nothing in a loss: pad targets, segment 0)."""
  n = num_rows(rows)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    yield {
      k: np.where(
        valid[:, None],
        v[np.where(valid, idx, 0)],
        0 if k in ("segment_ids", "positions") else pad_id,
      ).astype(v.dtype)
      for k, v in rows.items()
    }
