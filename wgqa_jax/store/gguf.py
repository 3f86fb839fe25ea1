"""GGUF files for llama.cpp, made by llama.cpp's own converter from our Hugging Face export.

    gguf.export(params, cfg, "model.gguf", tokenizer=tok)   # HF / DeciLM dir -> converter

The converter is the one vendored in the llama-cpp-python source package of the runtime's
version (vendor/llama.cpp/convert_hf_to_gguf.py with its conversion/ and gguf-py/), so that
what it writes is what that runtime reads. It is fetched once per machine from the package
registry with pip (`pip download --no-binary :all: llama-cpp-python==VERSION`, 76 MB) and only
those files are kept, in ~/.cache/wgqa_jax/ (or $WGQA_LLAMA_CPP_CONVERTER, a directory already
holding them). It needs torch and transformers (pip install 'wgqa_jax[engines]').

Which form goes in: Llama with one G for all layers as plain HF Llama (llama.cpp's `llama`
architecture, n_head_kv = G); with per-layer G as DeciLM (its `deci` architecture, n_head_kv per
layer); T5 with its KV heads expanded to MHA (its `t5` architecture has one n_head), and a tied
head written out as an untied one with T5's d_model**-0.5 output scaling folded in (llama.cpp's
t5 graph does not scale a tied head's input: its logits would be sqrt(d_model) times too large,
which greedy search does not see but sampling and beam scores do).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

from wgqa_jax.core import cli
from wgqa_jax.core.errors import MissingDependency, MissingInput, UserError
from wgqa_jax.models import family_of

# the llama-cpp-python the engines extra pins (setup.py): the converter of the runtime we test
LLAMA_CPP_PYTHON = "0.3.36"
CONVERTER_ENV = "WGQA_LLAMA_CPP_CONVERTER"
SCRIPT = "convert_hf_to_gguf.py"
KEPT = (SCRIPT, "conversion/", "gguf-py/")  # of vendor/llama.cpp/ in the source package
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def runtime_version() -> str:
  """The installed llama-cpp-python's version (the runtime), else the pinned one."""
  try:
    from importlib.metadata import version

    return version("llama_cpp_python")
  except Exception:
    return LLAMA_CPP_PYTHON


def converter_dir(version: str | None = None) -> str:
  """Where the converter of `version` lives: $WGQA_LLAMA_CPP_CONVERTER, else the cache."""
  if os.environ.get(CONVERTER_ENV):
    return os.environ[CONVERTER_ENV]
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(cache, "wgqa_jax", f"llama.cpp-converter-{version or runtime_version()}")


def fetch_converter(version: str | None = None) -> str:
  """The converter's directory, fetched with pip the first time (a one-line error offline)."""
  version = version or runtime_version()
  target = converter_dir(version)
  if os.path.isfile(os.path.join(target, SCRIPT)):
    return target
  if os.environ.get(CONVERTER_ENV):
    raise MissingInput(f"${CONVERTER_ENV}={target} holds no {SCRIPT}")
  print(
    f"fetching llama.cpp's converter (llama-cpp-python {version}'s source package, once per "
    f"machine) into {target}",
    file=sys.stderr,
  )
  os.makedirs(os.path.dirname(target), exist_ok=True)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as tmp:
    got = subprocess.run(
      [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
       "--disable-pip-version-check", "-q", "-d", tmp, f"llama-cpp-python=={version}"],
      capture_output=True, text=True,
    )  # fmt: skip
    archives = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
    if got.returncode or not archives:
      said = [ln for ln in (got.stderr or got.stdout).splitlines() if ln.strip()]
      why = next((ln for ln in said if ln.startswith("ERROR")), said[-1] if said else "?")
      raise MissingDependency(
        f"could not fetch llama.cpp's converter (pip download llama-cpp-python=={version}: "
        f"{cli.first_line(why, 160)}); set ${CONVERTER_ENV} to a directory holding "
        f"vendor/llama.cpp's {SCRIPT}, conversion/ and gguf-py/"
      )
    staged = os.path.join(tmp, "converter")
    with tarfile.open(os.path.join(tmp, archives[0])) as tar:
      for member in tar.getmembers():
        _, _, rest = member.name.partition("/vendor/llama.cpp/")
        safe = ".." not in rest.split("/") and not os.path.isabs(rest)
        if rest and safe and rest.startswith(KEPT) and (member.isfile() or member.isdir()):
          member.name = rest
          try:
            tar.extract(member, staged, filter="data")
          except TypeError:  # Python before 3.10.12 has no filters; the checks above stand in
            tar.extract(member, staged)
    if not os.path.isfile(os.path.join(staged, SCRIPT)):
      raise MissingDependency(f"llama-cpp-python {version}'s source package has no {SCRIPT}")
    try:  # a directory renames whole: the target is complete, or not there
      os.replace(staged, target)
    except OSError:  # another process (a second test worker) put it there first
      if not os.path.isfile(os.path.join(target, SCRIPT)):
        raise
  return target


# The converter, run with one change. llama.cpp reads a Llama's (or DeciLM's) tokenizer.model as
# a BPE sentencepiece vocabulary, Llama's own kind; ours, trained on the fly, is unigram (T5's
# kind), which that reader would write as BPE (other ids, and a crash on an unknown character).
# The converter's T5 reader writes a unigram vocabulary as llama.cpp's unigram tokenizer, with
# its normalisation, and a BPE one as the Llama reader does: a unigram tokenizer.model goes to
# it. Every other tokenizer (a real Llama's) takes the converter's own path.
RUN = """
import os, sys
sys.argv[0] = {script!r}
import convert_hf_to_gguf as converter
from conversion.deci import DeciModel
from conversion.llama import LlamaModel
from conversion.t5 import T5Model
from sentencepiece import sentencepiece_model_pb2

def unigram(directory):
    path = os.path.join(directory, "tokenizer.model")
    if not os.path.isfile(path):
        return False
    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto.trainer_spec.model_type == 1

for cls in (LlamaModel, DeciModel):
    def set_vocab(self, own=cls.set_vocab):
        return T5Model.set_vocab(self) if unigram(self.dir_model) else own(self)
    cls.set_vocab = set_vocab
converter.main()
"""


def form_of(cfg) -> str:
  """The HF form our export takes on its way to GGUF (the family's serving_form)."""
  return family_of(cfg).serving_form(cfg)


def check_installed() -> str:
  """The converter's directory, with what it imports installed; a one-line refusal naming the
  install command otherwise."""
  try:
    import sentencepiece  # noqa: F401  the converter's own imports
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError as e:
    raise MissingDependency(
      f"llama.cpp's converter needs torch, transformers and sentencepiece ({e.name} is "
      f"missing): pip install 'wgqa_jax[engines]'"
    ) from None
  return fetch_converter()


def convert(hf_dir: str, out_file: str, outtype: str = "f16") -> str:
  """Run llama.cpp's converter on a HF directory; the GGUF is written whole or not at all."""
  if outtype not in OUTTYPES:
    raise UserError(f"GGUF type {outtype!r}: one of {', '.join(OUTTYPES)}")
  where = check_installed()
  tmp = f"{out_file}.tmp-{os.getpid()}"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(where, "gguf-py"), where])}
  env.pop("NO_LOCAL_GGUF", None)  # its own gguf-py, not a PyPI gguf of another version
  got = subprocess.run(
    [sys.executable, "-c", RUN.format(script=os.path.join(where, SCRIPT)), hf_dir,
     "--outfile", tmp, "--outtype", outtype],
    capture_output=True, text=True, env=env,
  )  # fmt: skip
  if got.returncode:
    if os.path.exists(tmp):
      os.remove(tmp)
    lines = [ln for ln in (got.stderr or got.stdout).strip().splitlines() if ln.strip()]
    raise UserError(f"llama.cpp's converter refused the export: {lines[-1] if lines else '?'}")
  os.replace(tmp, out_file)
  return out_file


def export(params, cfg, out_file: str, tokenizer, generation_settings=None, outtype="f16") -> str:
  """Write `out_file`, a GGUF of (params, cfg) with its tokenizer, through the HF form
  `form_of(cfg)` (written to a temporary directory beside it) and llama.cpp's converter."""
  from wgqa_jax.store import hf

  if tokenizer is None:
    raise UserError("a GGUF holds its tokenizer: pass the one the model was trained with")
  form = form_of(cfg)
  # refusals first, before anything is written; what it gives save_hf is its own fixed point
  params, cfg = hf.exportable(params, cfg, form)
  parent = os.path.dirname(os.path.abspath(out_file))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".gguf-src-", dir=parent)
  try:
    hf_dir = os.path.join(staging, "hf")
    hf.save_hf(params, cfg, hf_dir, generation_settings, form=form, tokenizer=tokenizer)
    return convert(hf_dir, out_file, outtype)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
