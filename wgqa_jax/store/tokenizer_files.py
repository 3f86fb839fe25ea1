"""A model's tokenizer written into its export, as files that transformers, llama.cpp's
converter and CTranslate2 read into the very ids we trained on.

  a sentencepiece vocabulary trained on the fly (wgqa_jax.data.tokenizers, unigram): the .model
      file as spiece.model (what HF's T5Tokenizer reads) and under the family's own name for it
      (Llama: tokenizer.model, where llama.cpp's converter looks), and a tokenizer_config.json /
      special_tokens_map.json naming its special pieces: pad 0, EOS 1, unk 2, no BOS, and T5's
      sentinels as extra_ids. Its HF class is T5Tokenizer (HF's LlamaTokenizer reads a
      sentencepiece file as BPE, and gives a unigram vocabulary other ids), which ends every
      text with EOS: right for T5, whose inputs end so. A decoder-only model's text ends with
      nothing (lm-evaluation-harness's HF model splits context + continuation by tokens, and an
      EOS after the context moved the continuation by one): its export also has a
      tokenizer.json, the same vocabulary with no token added, of class
      PreTrainedTokenizerFast, which transformers reads first (written where transformers is
      installed, as it is wherever that export is read; else a line says so).
  a Hugging Face tokenizer: its own files (save_pretrained)
  bytes: no files can hold it; `check` refuses in one line
"""

from __future__ import annotations

import json
import os

from wgqa_jax.core.errors import UserError
from wgqa_jax.data import tokenizers
from wgqa_jax.models import family_of

SPM_FILE = "spiece.model"  # where HF's T5Tokenizer reads a sentencepiece vocabulary


def special_tokens(tok) -> dict[str, str]:
  """The pieces of a sentencepiece vocabulary's pad, EOS and unk ids (trained as <pad>, </s>,
  <unk>)."""
  sp = tok.sp
  return {
    "pad_token": sp.id_to_piece(tok.pad_id),
    "eos_token": sp.id_to_piece(tok.eos_id),
    "unk_token": sp.id_to_piece(tokenizers.UNK),
  }


def holds(tokenizer) -> bool:
  """Whether files can hold `tokenizer` (ours of bytes has none)."""
  return isinstance(tokenizer, (tokenizers.HFTokenizer, tokenizers.SentencePieceTokenizer))


def check(tokenizer) -> None:
  """A one-line refusal for a tokenizer no files hold (before anything is written)."""
  if not holds(tokenizer):
    raise UserError(
      f"the {tokenizer.name!r} tokenizer has no files a serving engine reads: train with a "
      f"sentencepiece or Hugging Face tokenizer to export one"
    )


def write(tokenizer, cfg, out_dir: str) -> list[str]:
  """Write `tokenizer`'s files for a model of `cfg`'s family into out_dir; the names written."""
  check(tokenizer)
  if isinstance(tokenizer, tokenizers.HFTokenizer):
    return list(tokenizer.tok.save_pretrained(out_dir))
  family = family_of(cfg)
  special = special_tokens(tokenizer)
  bos = getattr(cfg, "bos_token_id", None)
  settings = {
    "tokenizer_class": "T5Tokenizer",  # HF's unigram sentencepiece tokenizer
    **special,
    # ours has no BOS, and a decoder-only config names EOS as its bos_token_id (what it
    # starts from, models.llama for_tokenizer); it is never added: prompts start with their
    # first piece. Engines that need a BOS string (CTranslate2) get that one.
    "bos_token": tokenizer.sp.id_to_piece(bos) if bos is not None else None,
    "add_bos_token": False,
    "add_eos_token": False,
    "extra_ids": tokenizer.extra_ids,
    "legacy": False,
    # the longest context (T5's config.json has no such field: t5-small's tokenizer says 512,
    # where lm-evaluation-harness's HF model reads it)
    "model_max_length": family.context_length(cfg),
  }
  files = {
    **{name: tokenizer.proto for name in {SPM_FILE, family.spm_file}},
    "tokenizer_config.json": json.dumps(settings, indent=2).encode(),
    "special_tokens_map.json": json.dumps(special, indent=2).encode(),
  }
  for name, data in files.items():
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(data)
  if not family.encoder_decoder:
    return list(files) + _plain_fast_tokenizer(out_dir)
  return list(files)


def _plain_fast_tokenizer(out_dir: str) -> list[str]:
  """Make the T5Tokenizer files in out_dir a tokenizer that adds no token (see the module's
  docstring): tokenizer.json and its class; the names written, none without transformers."""
  try:
    from tokenizers import processors
    from transformers import AutoTokenizer
  except ImportError:
    print(
      "note: transformers is not installed: this export's HF tokenizer (T5Tokenizer) ends "
      "every text with EOS; install transformers and export again for one that does not"
    )
    return []
  backend = AutoTokenizer.from_pretrained(out_dir).backend_tokenizer
  backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
  backend.save(os.path.join(out_dir, "tokenizer.json"))
  config_file = os.path.join(out_dir, "tokenizer_config.json")
  with open(config_file) as f:
    settings = json.load(f)
  with open(config_file, "w") as f:
    json.dump({**settings, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
  return ["tokenizer.json"]
