"""A GGUF of ours run by llama.cpp (through llama-cpp-python, the engines extra): greedy tokens,
logits and the engine's own report of its KV cache, for the tests that hold our exports to the
engine and for benchmarks/serving.py.

    engine = Engine("model.gguf", n_ctx=2048)
    engine.kv_cache_mib                  # {"K": MiB, "V": MiB}, as llama.cpp logs it
    engine.greedy([5, 17, 9], 32)        # decoder-only: the prompt's continuation, EOS included
    engine.logits([5, 17, 9])            # (3, V) next-token logits at every prompt position
    engine.seq2seq_greedy([5, 17, 1], 32)  # T5: encode, then decode from its start token

Prompts are token ids (ours): the engine adds no BOS, as the tokenizer files we write say.
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np

from wgqa_jax.core.errors import MissingDependency, UserError

# llama.cpp's log line for the KV cache it allocated (src/llama-kv-cache.cpp)
KV_LINE = re.compile(
  r"llama_kv_cache: size = +([\d.]+) MiB .*K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB"
)


def _llama_cpp():
  try:
    import llama_cpp
  except ImportError:
    raise MissingDependency(
      "llama.cpp's runtime is not installed: pip install 'wgqa_jax[engines]' (builds "
      "llama-cpp-python from source once: minutes on 2 cores)"
    ) from None
  return llama_cpp


class Engine:
  """One GGUF loaded in llama.cpp on the CPU, with a context of n_ctx tokens."""

  def __init__(
    self,
    path: str,
    n_ctx: int = 512,
    n_threads: int | None = None,
    kv_type: str = "f16",
    flash_attn: bool = False,
    logits_all: bool = True,
  ):
    """kv_type: the KV cache's dtype, llama.cpp's default f16, or f32 (to compare logits with
    an f32 model without the cache's rounding). flash_attn: llama.cpp's flash attention. Without
    it llama.cpp keeps V transposed, and pads every layer's V cache to the largest layer's:
    per-layer KV budgets are served at their size with it on (llama-cli -fa on). logits_all:
    keep every position's logits (`logits`); without it only `last_logits` (faster)."""
    llama_cpp = _llama_cpp()
    ggml_type = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[kv_type]
    log = io.StringIO()
    try:
      with contextlib.redirect_stderr(log):  # llama-cpp-python prints llama.cpp's log there
        self.llm = llama_cpp.Llama(
          path,
          n_ctx=n_ctx,
          n_batch=min(n_ctx, 512),
          n_threads=n_threads,
          logits_all=logits_all,
          type_k=ggml_type,
          type_v=ggml_type,
          flash_attn=flash_attn,
          verbose=True,
        )
    except ValueError as e:  # not a GGUF, torn, or of an architecture it does not know
      said = [ln for ln in log.getvalue().splitlines() if "error" in ln.lower()]
      raise UserError(f"llama.cpp cannot load {path}: {said[-1] if said else e}") from None
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # the load's log is read; decoding's is not wanted
    self.llm.verbose = False
    self.log = log.getvalue()
    found = KV_LINE.findall(self.log)
    # {"K": MiB, "V": MiB, "type": the cache's dtype}; None where the model has no KV cache
    self.kv_cache_mib = (
      {"K": float(found[-1][2]), "V": float(found[-1][4]), "type": found[-1][1]} if found else None
    )
    self.n_vocab = self.llm.n_vocab()
    self.logits_all = logits_all
    self._lib = llama_cpp

  def logits(self, ids) -> np.ndarray:
    """(len(ids), V) float32 next-token logits at every position of `ids`."""
    if not self.logits_all:
      raise ValueError("Engine(logits_all=False) keeps no logits but the last: use last_logits")
    self.llm.reset()
    self.llm.eval([int(i) for i in ids])
    return np.array(self.llm.scores[: len(ids)], np.float32)

  def last_logits(self) -> np.ndarray:
    """(V,) the logits of the last token evaluated (`llm.eval`)."""
    row = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
    return np.ctypeslib.as_array(row, (self.n_vocab,)).copy()

  def greedy(self, ids, max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """The greedy continuation of `ids` by the engine's own sampler (temperature 0, no
    penalties), up to and including the first `eos_id`."""
    out = []
    self.llm.reset()
    for tok in self.llm.generate(
      [int(i) for i in ids], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0
    ):
      out.append(int(tok))
      if len(out) == max_new_tokens or tok == eos_id:
        break
    return out

  def seq2seq_greedy(
    self, ids, max_new_tokens: int, eos_id: int | None = None, logits: bool = False
  ):
    """An encoder-decoder model (T5): encode `ids`, then decode greedily from the model's
    decoder start token, up to and including the first `eos_id`. With `logits`, also the
    (steps, V) logits each token was chosen from."""
    lib, ctx = self._lib, self.llm.ctx
    model = self.llm.model
    lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
    enc = (lib.llama_token * len(ids))(*[int(i) for i in ids])
    if lib.llama_encode(ctx, lib.llama_batch_get_one(enc, len(ids))):
      raise RuntimeError("llama_encode failed")
    token, out, rows = lib.llama_model_decoder_start_token(model), [], []
    for _ in range(max_new_tokens):
      one = (lib.llama_token * 1)(token)
      if lib.llama_decode(ctx, lib.llama_batch_get_one(one, 1)):
        raise RuntimeError("llama_decode failed")
      row = self.last_logits()
      rows.append(row)
      token = int(np.argmax(row))
      out.append(token)
      if token == eos_id:
        break
    return (out, np.stack(rows)) if logits else out

  def close(self) -> None:
    self.llm.close()
