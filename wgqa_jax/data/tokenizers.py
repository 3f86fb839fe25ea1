"""Tokenizers: bytes (no files), sentencepiece trained on the fly (offline), or a HF tokenizer.

Every tokenizer pickles (grain's worker processes tokenize with a copy). ids: 0 pad, 1 eos, 2 unk
for the two built-in ones, as T5's vocabularies. `prefix` is what the tokenizer puts before a
prompt: a Llama tokenizer's BOS, nothing for T5's and ours (wgqa_jax.data.pipeline.Tokenize adds
it).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable

from wgqa_jax.core import cli
from wgqa_jax.core.errors import MissingInput, UserError

PAD, EOS, UNK = 0, 1, 2


def until_eos(ids: Iterable[int], eos_id: int) -> list[int]:
  """The ids before the first EOS, as Python ints."""
  out = []
  for i in ids:
    if int(i) == eos_id:
      break
    out.append(int(i))
  return out


class ByteTokenizer:
  """UTF-8 bytes shifted by 3 (0 = pad, 1 = eos, 2 = unk), like ByT5. Needs no files."""

  name = "bytes"
  vocab_size = 259
  pad_id, eos_id = PAD, EOS
  prefix: tuple[int, ...] = ()

  def encode(self, text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]

  def decode(self, ids: Iterable[int]) -> str:
    # ids past the byte range (a bigger embedding) decode to nothing
    out = bytearray(i - 3 for i in until_eos(ids, EOS) if 3 <= i < 259)
    return out.decode("utf-8", errors="ignore")


class HFTokenizer:
  """A Hugging Face tokenizer (local dir or hub id): T5's, or a decoder-only model's.

  prefix: the BOS the tokenizer itself starts a text with (Llama: yes; T5: none). A tokenizer
  without a pad token (Llama's) pads with EOS, as HF's recipes do: rows keep their tokens up to the
  first EOS (wgqa_jax.training.objectives), so a pad that equals EOS is never mistaken for text."""

  def __init__(self, name: str):
    from transformers import AutoTokenizer

    self.name = name
    self.tok = AutoTokenizer.from_pretrained(name)
    self.vocab_size = len(self.tok)
    self.eos_id = self.tok.eos_token_id
    if self.eos_id is None:
      raise UserError(f"tokenizer {name!r} has no EOS token: examples could not end")
    self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_id
    bos, plain = self.tok.bos_token_id, self.tok("a", add_special_tokens=False)["input_ids"]
    special = self.tok("a", add_special_tokens=True)["input_ids"]
    self.prefix = (bos,) if bos is not None and special[:1] == [bos] != plain[:1] else ()

  def encode(self, text: str) -> list[int]:
    return self.tok(text, add_special_tokens=False)["input_ids"]

  def decode(self, ids: Iterable[int]) -> str:
    return self.tok.decode(until_eos(ids, self.eos_id), skip_special_tokens=True)


# sentencepiece's trainer silently skips inputs longer than this (bytes); we cut texts below it
SPM_MAX_SENTENCE_BYTES = 4192


def sentence_pieces(text: str, limit: int = SPM_MAX_SENTENCE_BYTES - 192) -> list[str]:
  """`text` cut at sentence ends (else spaces, else anywhere) into pieces under `limit` bytes,
  so a long article trains the tokenizer instead of being dropped by sentencepiece."""
  if len(text.encode("utf-8")) <= limit:
    return [text]
  pieces, current = [], ""
  for sentence in re.split(r"(?<=[.!?])\s+", text):
    while len(sentence.encode("utf-8")) > limit:  # one huge "sentence": cut by characters
      head, sentence = sentence[: limit // 4], sentence[limit // 4 :]
      pieces.append(head)
    if current and len((current + " " + sentence).encode("utf-8")) > limit:
      pieces.append(current)
      current = sentence
    else:
      current = f"{current} {sentence}" if current else sentence
  return pieces + ([current] if current else [])


class SentencePieceTokenizer:
  """A sentencepiece model trained on the fly on a sample of the training texts (offline), saved
  in the workdir so a resumed run uses the very same vocabulary. ids: 0 pad, 1 eos, 2 unk.

  extra_ids: that many ids after the pieces, T5's sentinels for span corruption (as seqio's
  SentencePieceVocabulary(extra_ids=100)): the last id is sentinel 0, counting down."""

  pad_id, eos_id = PAD, EOS
  prefix: tuple[int, ...] = ()

  def __init__(self, model_file: str, extra_ids: int = 0):
    self.name, self.extra_ids = model_file, extra_ids
    try:
      with open(model_file, "rb") as f:
        self._proto = f.read()
      self._load()
    except (OSError, RuntimeError) as e:
      raise UserError(
        f"cannot read the sentencepiece model {model_file}: {cli.first_line(e)}"
      ) from e

  def _load(self):
    import sentencepiece as spm

    self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self.pieces = self.sp.get_piece_size()
    self.vocab_size = self.pieces + self.extra_ids

  @property
  def proto(self) -> bytes:
    """The sentencepiece model file's bytes (what an export writes)."""
    return self._proto

  def __getstate__(self):  # the model's bytes travel, not the C++ object
    return {"_proto": self._proto, "extra_ids": self.extra_ids, "name": self.name}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._load()

  @classmethod
  def train_or_load(
    cls, model_file: str, texts: Iterable[str], vocab_size: int, extra_ids: int = 0
  ):
    if not os.path.exists(model_file):
      import sentencepiece as spm

      os.makedirs(os.path.dirname(model_file) or ".", exist_ok=True)
      proto = io.BytesIO()
      spm.SentencePieceTrainer.train(
        sentence_iterator=(p for t in texts for p in sentence_pieces(t)),
        model_writer=proto,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=PAD,
        eos_id=EOS,
        unk_id=UNK,
        bos_id=-1,
        hard_vocab_limit=False,
        max_sentence_length=SPM_MAX_SENTENCE_BYTES,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
      )
      tmp = model_file + ".tmp"
      with open(tmp, "wb") as f:
        f.write(proto.getvalue())
      os.replace(tmp, model_file)
    return cls(model_file, extra_ids)

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    return self.sp.decode([i for i in until_eos(ids, self.eos_id) if 2 < i < self.pieces])


def fingerprint(tokenizer) -> str:
  """A SHA-256 of everything that decides the ids: a resumed run must tokenize as it started."""
  import hashlib
  import json

  h = hashlib.sha256(type(tokenizer).__name__.encode())
  if isinstance(tokenizer, SentencePieceTokenizer):
    h.update(tokenizer._proto + f"|extra_ids={tokenizer.extra_ids}".encode())
  elif isinstance(tokenizer, HFTokenizer):
    backend = getattr(tokenizer.tok, "backend_tokenizer", None)
    h.update(
      backend.to_str().encode()
      if backend is not None
      else json.dumps(sorted(tokenizer.tok.get_vocab().items())).encode()
    )
    h.update(f"|{tokenizer.eos_id}|{tokenizer.pad_id}|{tokenizer.prefix}".encode())
  return h.hexdigest()


def sentinels(tokenizer) -> tuple[int, int]:
  """(first sentinel id, number of sentinels) for span corruption: ids counting down from the
  first, T5's <extra_id_0>, <extra_id_1>, ... (HF) or the extra ids after our pieces."""
  extra = getattr(tokenizer, "extra_ids", 0)
  if extra:
    return tokenizer.vocab_size - 1, extra
  tok = getattr(tokenizer, "tok", None)
  first = tok.convert_tokens_to_ids("<extra_id_0>") if tok is not None else None
  if first is None or first == tok.unk_token_id:
    raise UserError(
      f"tokenizer {tokenizer.name!r} has no sentinel ids (<extra_id_0>, ...) for "
      f"span corruption: use a T5 tokenizer, or data.tokenizer=sentencepiece"
    )
  count = 1
  while tok.convert_tokens_to_ids(f"<extra_id_{count}>") == first - count:
    count += 1
  return first, count


def get_tokenizer(
  name: str, workdir: str | None = None, train_texts=None, vocab_size=512, extra_ids: int = 0
):
  """ "bytes" | "sentencepiece" (trained on train_texts, cached in workdir) | a sentencepiece
  .model file (another run's: a fine-tuning stage reads its pretraining's vocabulary) | HF dir or
  id. train_texts: an iterable of strings (a bounded sample: wgqa_jax.data.tasks.tokenizer_sample);
  extra_ids: sentinels appended to a sentencepiece vocabulary (span corruption)."""
  if name == "bytes":
    return ByteTokenizer()
  if name.endswith(".model"):
    if not os.path.isfile(name):
      raise MissingInput(f"no sentencepiece model {name}")
    return SentencePieceTokenizer(name, extra_ids)
  if name == "sentencepiece":
    if workdir is None:
      raise UserError("tokenizer='sentencepiece' needs a workdir to keep its model in")
    model_file = os.path.join(workdir, "spm.model")
    if train_texts is None and not os.path.exists(model_file):
      raise UserError(f"no {model_file} yet: pass the training texts to train it")
    return SentencePieceTokenizer.train_or_load(
      model_file, train_texts or (), vocab_size, extra_ids
    )
  return HFTokenizer(name)
