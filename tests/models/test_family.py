"""A model family is an interface: the registry (wgqa_jax/models/family.py) and each family's
folder are the only code that names a family; everything else asks the family of a config."""

import ast
import io
import os
import re
import tokenize

import jax
import pytest

from wgqa_jax.models import families, family_of, preset
from wgqa_jax.models.family import Family

PACKAGE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "wgqa_jax"
)
# where a family may be named: the registry and the family folders
OWNERS = [os.path.join(PACKAGE, "models", "family.py")] + [
  os.path.join(PACKAGE, "models", name) + os.sep for name in families()
]
# llama.cpp's glue names the engine (llama.cpp, llama-cpp-python) and its converter's own model
# classes (LlamaModel, T5Model), not our families: it is exempt, and asks the family of a config
# like everything else (store/gguf.py: family_of(cfg).serving_form)
ENGINE_GLUE = [
  os.path.join(PACKAGE, "store", "gguf.py"),
  os.path.join(PACKAGE, "decoding", "llama_cpp.py"),
]
# a family's names, and what only one family's config has (T5's d_model, Llama's hidden_size;
# the shared name is `width`), or the old family test (models.is_causal)
NAMES = [re.escape(n) for f in families().values() for n in (f.name, *f.hf_model_types)]
FAMILY_WORDS = re.compile(r"\b(?:" + "|".join(NAMES) + r"|is_causal|d_model|hidden_size)\b", re.I)


def code_tokens(path):
  """(line, text) of every identifier and string literal that is code, not prose (docstrings,
  comments and user-facing messages in f-strings' text are prose)."""
  with open(path) as f:
    source = f.read()
  docstrings = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
      docstrings.update(range(node.lineno, node.end_lineno + 1))
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.start[0] in docstrings:
      continue
    if tok.type == tokenize.NAME:
      yield tok.start[0], tok.string
    elif tok.type == tokenize.STRING and not tok.string.lstrip("rbuRBU").startswith(("f", "F")):
      yield tok.start[0], ast.literal_eval(tok.string) if "\\N" not in tok.string else ""


def test_only_the_registry_and_the_family_folders_name_a_family():
  found = []
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      path = os.path.join(root, name)
      if not name.endswith(".py") or any(path == o or path.startswith(o) for o in OWNERS):
        continue
      if path in ENGINE_GLUE:
        continue
      for line, text in code_tokens(path):
        if isinstance(text, str) and (
          FAMILY_WORDS.fullmatch(text)
          or (text.isidentifier() and FAMILY_WORDS.search(text.replace("_", " ")))
        ):
          found.append(f"{os.path.relpath(path, PACKAGE)}:{line}: {text}")
  assert not found, "a family named outside models/family.py and its folder:\n" + "\n".join(found)


def test_the_scan_finds_a_family_named_outside_its_folder(tmp_path):
  """The check above can fail: the branch the layered package removed is what it finds."""
  path = tmp_path / "objectives.py"
  path.write_text(
    '"""T5 and llama in prose are fine."""\n'
    'def forward(cfg):\n  if cfg.family == "llama":  # llama here too\n'
    '    return cfg.hidden_size\n  return models.is_causal(cfg)\n'
  )
  words = [t for _, t in code_tokens(path) if FAMILY_WORDS.fullmatch(t)]
  assert words == ["llama", "hidden_size", "is_causal"]


@pytest.mark.parametrize("name", sorted(families()))
def test_every_family_provides_what_the_package_asks_of_it(name):
  """What docs/families.md lists: the Family methods (abstract: a family lacking one cannot be
  made) and the model config's shared fields, on a real random model of the family."""
  family = families()[name]
  assert isinstance(family, Family) and not getattr(type(family), "__abstractmethods__", None)
  cfg = preset(sorted(family.presets, key=len)[0])  # the family's smallest preset name
  assert family_of(cfg) is family and cfg.family == name
  for field in (
    "num_heads",
    "width",
    "vocab_size",
    "pad_token_id",
    "eos_token_id",
    "grouping",
    "dtype",
    "param_dtype",
    "dropout_rate",
    "remat",
    "scan_layers",
    "rotary_keys",
  ):
    assert hasattr(cfg, field), f"{name} config has no {field}"
  modules = list(cfg.attention_modules())
  assert modules and set(cfg.cached_modules()) <= {path for path, _ in modules}
  params = family.init_params(cfg, jax.random.PRNGKey(0))
  shapes = family.param_shapes(cfg)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(
    lambda x: (x.shape, x.dtype), shapes
  )
  assert jax.tree.structure(family.param_axes(cfg), is_leaf=lambda x: x is None) is not None
  for path, _ in modules:  # every attention module's K/V heads are where the config says
    node = params
    for key in path:
      node = node[key]
    assert node["k"].shape[-2] == cfg.kv_heads_at(path)
  assert type(cfg).from_dict(cfg.to_dict()) == cfg
  assert (
    family.config_from_hf(cfg.to_hf()).replace(grouping=cfg.grouping).num_heads == cfg.num_heads
  )
