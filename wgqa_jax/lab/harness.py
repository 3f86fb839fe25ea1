"""wgqa_jax as an EleutherAI lm-evaluation-harness model (`lm_eval.api.model.LM`), registered as
"wgqa_jax": the harness's tasks scored on our JAX model directly, for any checkpoint and every
variant (per-layer G, KDGQA / DGQA, unequal groups and un-folded WGQA included, which no HF
export holds), both families.

    python -m wgqa_jax.harness --model wgqa_jax --model_args checkpoint=PATH --tasks hellaswag
    lm_eval.simple_evaluate(model=HarnessLM(checkpoint=PATH), tasks=[...])   # in Python

It computes what the harness's own HF model (`--model hf`, lm_eval.models.huggingface.HFLM)
computes, on the same tokens:
- tokens: a decoder-only model's text starts with its tokenizer's BOS (a Llama tokenizer's; ours
  has none); T5's ends with EOS, and a continuation is encoded without it. An empty context is
  the BOS (else EOS) token (`prefix_token_id`); rolling log-likelihoods use the harness's own
  windows of `max_length` tokens.
- loglikelihood: a decoder-only model reads context + continuation, cut from the left to
  max_length + 1 tokens (as HFLM: counted, and said once per call); T5's encoder reads the
  context (its last max_length tokens) and its decoder the continuation.
- generate_until: greedy search (or sampling, as the request's kwargs say) from the context cut
  from the left to max_length - max_gen_toks tokens (T5: max_length), for max_gen_toks new
  tokens, the text cut at the first stop string. HFLM's T5 generates up to (its batch's longest
  context) + max_gen_toks - 1 tokens (HF's max_length counts the start token, and the harness
  adds the context's length to it): where it stops later than max_gen_toks, ours is a prefix.
Requests are batched by length into a few padded shapes (powers of two), so that jit compiles
each shape once; the model runs on the default device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from wgqa_jax.core.errors import MissingDependency, MissingInput, UserError
from wgqa_jax.decoding.search import generate
from wgqa_jax.decoding.settings import GenerationConfig
from wgqa_jax.grouping import variants
from wgqa_jax.lab.checkpoint_tokenizer import open_tokenizer
from wgqa_jax.models import family_of
from wgqa_jax.store.resolve import resolve

try:
  from lm_eval import utils as lm_utils
  from lm_eval.api.model import TemplateLM
  from lm_eval.api.registry import register_model
  from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
  )
except ImportError as e:  # pragma: no cover - the [harness] extra is part of [test]
  raise MissingDependency(
    f"lm-evaluation-harness is not installed ({e}): pip install -e '.[harness]'"
  ) from None

NAME = "wgqa_jax"  # --model NAME
DEFAULT_BATCH = 8
MIN_BUCKET = 16
# generation kwargs a request may carry, by the names GenerationConfig takes them under
GENERATION_KWARGS = {f.name for f in dataclasses.fields(GenerationConfig)} - {"max_new_tokens"}


def bucket(n: int, cap: int) -> int:
  """The padded length of n tokens: the next power of two (at least MIN_BUCKET), at most cap."""
  return min(max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()), max(cap, n))


@functools.partial(jax.jit, static_argnames=("cfg",))
def token_scores(params, batch, cfg):
  """(log p(label), label == argmax) at every position of a batch of rows (family.forward's
  alignment: position t predicts label t), float32."""
  logits, labels, _ = family_of(cfg).forward(params, batch, cfg)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked, jnp.argmax(logp, axis=-1) == labels


def _batch_size(value) -> int:
  """The harness passes --batch_size as given: an int, its string, or "auto[:N]" (ours: the
  default; jit wants one fixed batch)."""
  if value is None or (isinstance(value, str) and value.startswith("auto")):
    return DEFAULT_BATCH
  try:
    size = int(value)
  except ValueError:
    raise UserError(f"batch_size={value!r} is not a number") from None
  if size < 1:
    raise UserError(f"batch_size={size} must be at least 1")
  return size


@register_model(NAME)
class HarnessLM(TemplateLM):
  """model_args: checkpoint (a training workdir, a params dir or a HF T5 / Llama directory),
  tokenizer (default: the checkpoint's, as evaluate reads it), max_length (default: the
  family's context length), max_gen_toks (256, the harness's default), fold (fold WGQA weights
  first: the same outputs), dtype (float32 | bfloat16: params and compute), seed (sampling).
  In Python, `loaded=(params, cfg, tokenizer)` scores a model in memory (the lab's points)."""

  def __init__(
    self,
    checkpoint: str | None = None,
    tokenizer: str | None = None,
    batch_size=DEFAULT_BATCH,
    max_length: int | None = None,
    max_gen_toks: int = 256,
    fold: bool = False,
    dtype: str | None = None,
    seed: int = 0,
    loaded=None,
    device=None,  # the harness passes these to every model; jax places ours
    max_batch_size=None,
    **unknown,
  ):
    super().__init__()
    if unknown:
      raise UserError(
        f"unknown model_args for --model {NAME}: {sorted(unknown)} (known: checkpoint, "
        f"tokenizer, max_length, max_gen_toks, fold, dtype, seed)"
      )
    if (checkpoint is None) == (loaded is None):
      raise UserError(f"--model {NAME} needs model_args checkpoint=PATH")
    if loaded is not None:
      params, cfg, tok = loaded
      self.name = "in memory"
    else:
      source = resolve(str(checkpoint))
      params, cfg = source.load()
      tok = open_tokenizer(source, cfg, tokenizer)
      self.name = source.path
    if fold:
      params, cfg = variants.fold(params, cfg)
    if dtype is not None:
      if dtype not in ("float32", "bfloat16"):
        raise UserError(f"dtype={dtype!r}: float32 or bfloat16")
      cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
      params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    self.family = family_of(cfg)
    self.params, self.cfg, self.tok = jax.device_put(params), cfg, tok
    self.backend = "seq2seq" if self.family.encoder_decoder else "causal"
    self._batch = _batch_size(batch_size)
    self._max_length = int(max_length) if max_length else self.family.context_length(cfg)
    self._max_gen_toks = int(max_gen_toks)
    self.seed = int(seed)

  # ---- what the harness asks of a model ----
  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def prefix_token_id(self) -> int:
    """What an empty context is: a decoder-only model's BOS (ours: EOS, the token every
    document follows), T5's EOS, as HFLM's tokenizer-driven choice gives."""
    return self.tok.eos_id if self.family.encoder_decoder else self.cfg.bos_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def batch_size(self) -> int:
    return self._batch

  @property
  def tokenizer_name(self) -> str:
    return getattr(self.tok, "name", type(self.tok).__name__)

  def get_model_info(self) -> dict:
    return {
      "checkpoint": self.name,
      "family": self.cfg.family,
      "grouping": self.cfg.grouping.describe(self.cfg.num_heads),
    }

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    ids = list(self.tok.encode(string))
    if add_special_tokens is False:
      return ids
    if self.family.encoder_decoder:
      return ids + [self.tok.eos_id]  # T5's tokenizer ends a text with EOS
    return list(self.tok.prefix) + ids  # a decoder-only one starts it with its BOS, if any

  def tok_decode(self, ids) -> str:
    return self.tok.decode(ids)

  # ---- scoring ----
  def _rows(self, chunk):
    """One padded batch of (context, continuation) token pairs: (batch, per row the label
    positions of its continuation, how many rows were cut from the left)."""
    cap, pad = self._max_length, self.cfg.pad_token_id
    cut, spans = 0, []
    if self.family.encoder_decoder:
      enc = [ctx[-cap:] for ctx, _ in chunk]
      dec = [cont[-cap:] for _, cont in chunk]
      cut = sum(len(ctx) > cap for ctx, _ in chunk)
      li, lt = bucket(max(map(len, enc)), cap), bucket(max(map(len, dec)), cap)
      inputs = np.full((self._batch, li), pad, np.int32)
      targets = np.full((self._batch, lt), pad, np.int32)
      for r in range(self._batch):
        e, d = enc[r % len(chunk)], dec[r % len(chunk)]  # filler rows repeat real ones
        inputs[r, : len(e)], targets[r, : len(d)] = e, d
      spans = [(0, len(d)) for d in dec]
      return {"inputs": inputs, "targets": targets}, spans, cut
    seqs = []
    for ctx, cont in chunk:
      whole = ctx + cont
      cut += len(whole) > cap + 1
      seqs.append(whole[-(cap + 1) :])
      spans.append((len(seqs[-1]) - 1 - len(cont), len(seqs[-1]) - 1))
    length = bucket(max(map(len, seqs)), cap + 1)
    tokens = np.full((self._batch, length), pad, np.int32)
    segments = np.zeros((self._batch, length), np.int32)
    for r in range(self._batch):
      s = seqs[r % len(chunk)]
      tokens[r, : len(s)], segments[r, : len(s)] = s, 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape)
    return {"tokens": tokens, "segment_ids": segments, "positions": positions}, spans, cut

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """[(sum of the continuation's log-probabilities, whether greedy decoding gives it)] of
    ((context, continuation) strings or None, context ids, continuation ids) requests."""
    for _, _, cont in requests:
      if not cont:
        raise UserError("a loglikelihood request has an empty continuation")
      if len(cont) > self._max_length:
        raise UserError(
          f"a continuation of {len(cont)} tokens is longer than max_length={self._max_length}"
        )
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
    out: list = [None] * len(requests)
    cut = 0
    bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
    for start in range(0, len(order), self._batch):
      idx = order[start : start + self._batch]
      batch, spans, n_cut = self._rows([(requests[i][1], requests[i][2]) for i in idx])
      cut += n_cut
      logp, greedy = jax.device_get(token_scores(self.params, batch, self.cfg))
      for row, (i, (a, b)) in enumerate(zip(idx, spans)):
        answer = (float(logp[row, a:b].sum()), bool(greedy[row, a:b].all()))
        out[i] = answer
        if requests[i][0] is not None:
          self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
      bar.update(len(idx))
    bar.close()
    if cut:
      print(
        f"{NAME}: {cut} of {len(requests)} requests were longer than max_length="
        f"{self._max_length} and cut from the left, as the harness's HF model does"
      )
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Each text's total log-likelihood over the harness's own disjoint windows."""
    windows, owners = [], []
    for k, (string,) in enumerate(req.args for req in requests):
      for ctx, cont in map(
        lm_utils.make_disjoint_window,
        lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(string),
          prefix_token=self.prefix_token_id,
          max_seq_len=self._max_length,
          context_len=1,
        ),
      ):
        windows.append((None, ctx, cont))
        owners.append(k)
    scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
    totals = [0.0] * len(requests)
    for k, (logp, _) in zip(owners, scores):
      totals[k] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  # ---- generation ----
  def _generation(self, gen_kwargs: dict) -> tuple[GenerationConfig, list[str]]:
    """(our generation settings, the stop strings) of a request's kwargs, read as HFLM does."""
    kwargs = dict(normalize_gen_kwargs(gen_kwargs, self._max_gen_toks))
    until = handle_stop_sequences(kwargs.pop("until", None), eos=None)
    max_new = kwargs.pop("max_gen_toks")
    if not kwargs.get("do_sample"):
      kwargs.pop("temperature", None)  # greedy: the harness sets 0.0, which sampling refuses
    unknown = sorted(set(kwargs) - GENERATION_KWARGS)
    if unknown:
      raise UserError(
        f"generation kwargs {unknown} are not ones {NAME} takes ({sorted(GENERATION_KWARGS)})"
      )
    return GenerationConfig(max_new_tokens=int(max_new), **kwargs), until

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    out: list = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
      groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
    bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
    for n, idx in enumerate(groups.values()):
      gen, until = self._generation(requests[idx[0]].args[1])
      room = self._max_length - (0 if self.family.encoder_decoder else gen.max_new_tokens)
      if room < 1:
        raise UserError(
          f"max_gen_toks={gen.max_new_tokens} leaves no room for a context in "
          f"max_length={self._max_length}"
        )
      prompts = {i: self.tok_encode(requests[i].args[0])[-room:] for i in idx}
      idx = sorted(idx, key=lambda i: -len(prompts[i]))
      for start in range(0, len(idx), self._batch):
        chunk = idx[start : start + self._batch]
        length = bucket(max(len(prompts[i]) for i in chunk), room)
        inputs = np.full((self._batch, length), self.cfg.pad_token_id, np.int32)
        mask = np.zeros((self._batch, length), np.int32)
        for r in range(self._batch):  # left-padded, HF's layout; filler rows repeat real ones
          p = prompts[chunk[r % len(chunk)]]
          inputs[r, length - len(p) :], mask[r, length - len(p) :] = p, 1
        rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), n * len(requests) + start)
        new = jax.device_get(generate(self.params, self.cfg, inputs, gen, rng, mask))
        for r, i in enumerate(chunk):
          text = postprocess_generated_text(self.tok.decode(new[r]), until, None)
          out[i] = text
          self.cache_hook.add_partial("generate_until", requests[i].args, text)
        bar.update(len(chunk))
    bar.close()
    return out


# ---- the lab: harness metrics beside held-out loss ----
def check_task_folder(path: str, name: str = "task folder") -> None:
  """A one-line refusal of a task folder that is not there (the harness would ignore it)."""
  if not os.path.isdir(path):
    raise MissingInput(f"{name} {path}: no such directory")


def task_manager(include_path: str | None = None):
  """The harness's tasks, with the task YAMLs under include_path."""
  from lm_eval.tasks import TaskManager

  if include_path is not None:
    check_task_folder(include_path)
  return TaskManager(include_path=include_path)


def check_tasks(names: list[str], include_path: str | None = None):
  """The TaskManager that knows every one of `names` (a one-line refusal of those it does
  not), before any work."""
  manager = task_manager(include_path)
  missing = [n for n in names if n not in manager.all_tasks]
  if missing:
    where = f" (nor under {include_path})" if include_path else ""
    raise UserError(f"lm-evaluation-harness has no task {missing}{where}")
  return manager


def scorer(names: list[str], include_path: str | None = None, limit: int | None = None, **lm_args):
  """A function (params, cfg, tokenizer) -> {"eval/TASK:METRIC": value} that scores a model in
  memory on the harness's tasks (their numeric metrics, not the stderrs): training's
  extra_eval, at conversion and after uptraining (wgqa_jax.lab.pareto)."""
  import lm_eval

  manager = check_tasks(names, include_path)

  def score(params, cfg, tokenizer) -> dict:
    results = lm_eval.simple_evaluate(
      model=HarnessLM(loaded=(params, cfg, tokenizer), **lm_args),
      tasks=list(names),
      task_manager=manager,
      limit=limit,
      verbosity="WARNING",
    )["results"]
    return {
      f"eval/{task}:{metric.split(',')[0]}": float(value)
      for task, metrics in results.items()
      for metric, value in metrics.items()
      if "," in metric and "_stderr" not in metric and isinstance(value, (int, float))
    }

  return score
