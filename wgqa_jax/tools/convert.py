"""python -m wgqa_jax.convert: HF checkpoints (T5; Llama / Mistral) -> MHA / GQA / MQA / WGQA /
... params; fold; export (the library: wgqa_jax.lab.convert). The family comes from the
checkpoint's config.json.

    python -m wgqa_jax.convert --hf=t5-small --out=/tmp/t5s_gqa4 --variant=gqa --kv_heads=4
    python -m wgqa_jax.convert --params=/tmp/run/final --fold --out=/tmp/folded
    python -m wgqa_jax.convert --params=/tmp/folded --export_hf=/tmp/hf_out  # transformers loads
    python -m wgqa_jax.convert --hf=LLAMA_DIR --variant=wgqa --kv_heads=8 --out=/tmp/llama_wgqa8
    python -m wgqa_jax.convert --params=/tmp/llama_wgqa8 --fold --export_hf=/tmp/llama_gqa8
        # a native GQA Llama: num_key_value_heads=8, a KV cache of 8 heads in any server
    python -m wgqa_jax.convert --params=WORKDIR/final --export=gguf --export_to=/tmp/m.gguf
        # llama.cpp: per-layer G included (through the DeciLM form); docs/serving.md

Exports (--export=hf|decilm|deepseek|gguf --export_to=PATH; --export_hf=DIR is --export=hf)
carry the tokenizer the model was trained with: the run's, else the checkpoint's own files, or
--tokenizer.

Outputs: an existing, non-empty --out or export is refused unless --overwrite; the input
itself never is. Each is written beside its target and swapped in whole, and every check
(including whether the format can hold the export) runs before anything is written.

A checkpoint that is already GQA (a Llama with num_key_value_heads < H) is re-grouped to
--kv_heads through its MHA equivalent.

The library behind it: wgqa_jax.store (HF files, our params directory),
wgqa_jax.grouping.variants (MHA -> variant, fold, expand).
"""

from __future__ import annotations

import os

from absl import flags

from wgqa_jax.core import cli
from wgqa_jax.core.errors import MissingInput, UserError
from wgqa_jax.grouping import variants
from wgqa_jax.lab import convert
from wgqa_jax.lab.checkpoint_tokenizer import open_tokenizer
from wgqa_jax.models import family_of
from wgqa_jax.store import gguf, hf, params_io, tokenizer_files

FLAGS = cli.flag_set()
GGUF_MAGIC = b"GGUF"  # a GGUF file's first bytes
EXPORTS = {
  "hf": "a transformers directory (T5: KV heads expanded to MHA; Llama: native GQA, "
  "num_key_value_heads=G)",
  "decilm": "Llama with per-layer G: the DeciLM / Nemotron-NAS directory (block_configs) that "
  "llama.cpp's converter and vLLM read",
  "deepseek": "Llama converted to MLA (variant mla): a DeepSeek-V3 directory "
  "(DeepseekV3ForCausalLM) that transformers loads",
  "gguf": "a GGUF file for llama.cpp, made by llama.cpp's own converter (pip install "
  "'wgqa_jax[engines]')",
}
flags.DEFINE_string(
  "hf", None, "HF checkpoint (T5, Llama, Mistral): local directory or hub id", flag_values=FLAGS
)
flags.DEFINE_string(
  "params", None, "a wgqa_jax params directory (written by this tool or train)", flag_values=FLAGS
)
flags.DEFINE_enum(
  "variant",
  None,
  sorted(variants.VARIANTS),
  "variant to convert MHA params into (default: keep them as they are)",
  flag_values=FLAGS,
)
flags.DEFINE_integer("kv_heads", None, "G, the number of KV heads", flag_values=FLAGS)
flags.DEFINE_list(
  "group_sizes", None, "asymgqa: contiguous group sizes, e.g. 3,1,2,2", flag_values=FLAGS
)
flags.DEFINE_bool(
  "group_encoder",
  False,
  "group the encoder self-attention too (default: decoder only)",
  flag_values=FLAGS,
)
flags.DEFINE_integer("seed", 0, "RandWGQA init seed", flag_values=FLAGS)
flags.DEFINE_string(
  "calibration",
  None,
  "aligned / svd / search: the MHA model's calibration "
  "statistics (the calibration.npz a training run with that variant writes "
  "in its workdir)",
  flag_values=FLAGS,
)
flags.DEFINE_bool("fold", False, "fold WGQA weights into plain GQA kernels", flag_values=FLAGS)
flags.DEFINE_string("out", None, "write wgqa_jax params here", flag_values=FLAGS)
flags.DEFINE_enum(
  "export",
  None,
  list(EXPORTS),
  "what to export to --export_to: " + "; ".join(f"{k}: {v}" for k, v in EXPORTS.items()),
  flag_values=FLAGS,
)
flags.DEFINE_string(
  "export_to", None, "where --export writes (a directory; gguf: a .gguf file)", flag_values=FLAGS
)
flags.DEFINE_string(
  "export_hf", None, "shorthand for --export=hf --export_to=DIR", flag_values=FLAGS
)
flags.DEFINE_enum(
  "gguf_type", "f16", list(gguf.OUTTYPES), "--export=gguf: the weights' type", flag_values=FLAGS
)
flags.DEFINE_string(
  "tokenizer",
  None,
  "the tokenizer an export carries (default: the run's, else the checkpoint's own files; "
  "bytes | sentencepiece | a .model file | HF dir or id)",
  flag_values=FLAGS,
)
flags.DEFINE_bool("overwrite", False, "replace an existing --out / --export_to", flag_values=FLAGS)


def check_flags(a) -> None:
  """A flag that cannot apply is an error, not silently ignored."""
  if not a.variant:
    for flag, value in (
      ("kv_heads", a.kv_heads),
      ("group_sizes", a.group_sizes),
      ("group_encoder", a.group_encoder),
      ("calibration", a.calibration),
      ("seed", a.seed or None),
    ):
      if value:
        raise UserError(
          f"--{flag} applies only with --variant (without it the checkpoint is kept as it is)"
        )
    return
  if a.calibration:
    if not variants.get(a.variant).calibrated:
      calibrated = sorted(n for n in variants.VARIANTS if variants.get(n).calibrated)
      raise UserError(
        f"--calibration applies to the calibrated variants ({', '.join(calibrated)}), "
        f"not --variant={a.variant}"
      )
    if not os.path.isfile(a.calibration):
      raise MissingInput(f"--calibration={a.calibration}: no such file")


def export_target(a) -> tuple[str, str, str] | None:
  """(format, path, the flag that named the path) of the export asked for, if any."""
  if a.export_hf:
    if a.export or a.export_to:
      raise UserError("pass --export_hf=DIR or --export=FORMAT --export_to=PATH, not both")
    return "hf", a.export_hf, "export_hf"
  if bool(a.export) != bool(a.export_to):
    raise UserError("--export=FORMAT and --export_to=PATH go together: pass both")
  return (a.export, a.export_to, "export_to") if a.export else None


def check_outputs(a, export) -> None:
  """Refuse an output that would clobber: the input itself (compared by real path), the other
  output, anything that exists (a file, a non-empty directory) without --overwrite, and with it
  anything but what this tool writes there."""
  given = a.hf or a.params
  source = os.path.realpath(given) if os.path.exists(given) else None
  # (flag, path, what it holds: --overwrite replaces a directory holding that file, or a GGUF)
  targets = [("out", a.out, params_io.CONFIG_FILE)] if a.out else []
  if export:
    fmt, path, flag = export
    targets.append((flag, path, GGUF_MAGIC if fmt == "gguf" else "config.json"))
    if fmt == "gguf" and not path.endswith(".gguf"):
      raise UserError(f"--{flag}={path}: a GGUF export is one file; name it *.gguf")
  if len(targets) == 2 and os.path.realpath(targets[0][1]) == os.path.realpath(targets[1][1]):
    raise UserError(f"--out and --{targets[1][0]} are the same path; pass two")
  for flag, path, holds in targets:
    full = os.path.realpath(path)
    if source and (
      full == source or source.startswith(full + os.sep) or full.startswith(source + os.sep)
    ):
      raise UserError(
        f"--{flag}={path} would overwrite the input {a.hf or a.params}; write elsewhere"
      )
    if holds == GGUF_MAGIC:
      if os.path.isdir(full):
        raise UserError(f"--{flag}={path} is a directory; a GGUF export is one file")
      if os.path.exists(full):
        if not a.overwrite:
          raise UserError(f"--{flag}={path} exists; pass --overwrite to replace it")
        with open(full, "rb") as f:
          if f.read(4) != GGUF_MAGIC:
            raise UserError(
              f"--{flag}={path} is not a GGUF file: --overwrite replaces only what this tool "
              f"writes; name a new file"
            )
      continue
    if os.path.isfile(full) or (os.path.isdir(full) and os.listdir(full)):
      if not a.overwrite:
        raise UserError(f"--{flag}={path} exists; pass --overwrite to replace it")
      if os.path.isfile(full):
        raise UserError(f"--{flag}={path} is a file; pass a directory")
      if not os.path.exists(os.path.join(full, holds)):
        raise UserError(
          f"--{flag}={path} holds no {holds}: --overwrite replaces only what this tool "
          f"writes there; name a new or empty directory"
        )


def main(argv: list[str] | None = None) -> int:
  a = cli.parse(FLAGS, argv, "wgqa_jax.convert")
  if bool(a.hf) == bool(a.params):
    raise UserError("pass exactly one of --hf=DIR_OR_ID and --params=DIR")
  export = export_target(a)
  if not a.out and not export:
    raise UserError("nothing to write: pass --out and/or --export=FORMAT --export_to=PATH")
  check_flags(a)
  check_outputs(a, export)
  convert.check(a.variant, a.calibration)
  if export and export[0] == "gguf":
    gguf.check_installed()  # a missing engine is named before anything is loaded
  if a.hf:
    print(f"loading HF checkpoint {a.hf} ...")
  source = convert.load(a.hf or a.params, "hf" if a.hf else "params")
  params, cfg = convert.convert(
    *source.load(),
    a.variant,
    a.kv_heads,
    group_encoder=a.group_encoder,
    group_sizes=[int(x) for x in a.group_sizes] if a.group_sizes else None,
    seed=a.seed,
    calibration_file=a.calibration,
    fold=a.fold,
  )
  settings = source.generation_settings  # kept through every step
  tokenizer = None
  if export:  # can the format hold it, and its tokenizer? refuse before writing anything
    fmt, path, _ = export
    family = family_of(cfg)
    if fmt in ("decilm", "deepseek") and fmt not in family.hf_forms:
      what = "per-layer KV heads" if fmt == "decilm" else "MLA (latent attention)"
      also = "; its MLA stays in our format (--out)" if cfg.grouping.latent else ""
      raise UserError(
        f"--export={fmt} is for a Llama with {what}; a {family.title} model exports as hf or "
        f"gguf{also}"
      )
    # folded / expanded once here; the writers take it as it is (exportable's fixed point)
    exported = hf.exportable(params, cfg, gguf.form_of(cfg) if fmt == "gguf" else fmt)
    # a GGUF needs its tokenizer, and one named with --tokenizer must be there
    tokenizer = export_tokenizer(source, cfg, a.tokenizer, fmt == "gguf" or bool(a.tokenizer))
  # the export first: llama.cpp's converter may still refuse, and then nothing is written
  if export and fmt == "gguf":
    gguf.export(*exported, path, tokenizer, settings, a.gguf_type)
    print(f"wrote GGUF file {path} (llama.cpp: llama-cli -m {path} -fa on)")
  elif export:
    hf.save_hf(*exported, path, settings, form=fmt, tokenizer=tokenizer)
    print(f"wrote {dict(hf='HF', decilm='DeciLM', deepseek='DeepSeek-V3')[fmt]} directory {path}")
  if a.out:
    params_io.save(params, cfg, a.out, settings)
    print(f"wrote {a.out}")
  return 0


def export_tokenizer(source, cfg, name: str | None, required: bool):
  """The tokenizer an export carries. A GGUF needs one that files hold (a one-line refusal
  otherwise); an HF export goes without tokenizer files, and says why, when there is none."""
  try:
    tokenizer = open_tokenizer(source, cfg, name, required=required, fit=False)
    if tokenizer is not None:
      tokenizer_files.check(tokenizer)
  except UserError as e:
    if required:
      raise
    print(f"exporting without tokenizer files ({e}); pass --tokenizer to add them")
    return None
  if tokenizer is None:
    print("exporting without tokenizer files (none known); pass --tokenizer to add them")
  return tokenizer


if __name__ == "__main__":
  cli.run(main, FLAGS)
