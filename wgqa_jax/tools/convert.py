"""python -m wgqa_jax.convert: HF checkpoints (T5; Llama / Mistral) -> MHA / GQA / MQA / WGQA /
... params; fold; export (the library: wgqa_jax.lab.convert). The family comes from the
checkpoint's config.json.

    python -m wgqa_jax.convert --hf=t5-small --out=/tmp/t5s_gqa4 --variant=gqa --kv_heads=4
    python -m wgqa_jax.convert --params=/tmp/run/final --fold --out=/tmp/folded
    python -m wgqa_jax.convert --params=/tmp/folded --export_hf=/tmp/hf_out  # transformers loads
    python -m wgqa_jax.convert --hf=LLAMA_DIR --variant=wgqa --kv_heads=8 --out=/tmp/llama_wgqa8
    python -m wgqa_jax.convert --params=/tmp/llama_wgqa8 --fold --export_hf=/tmp/llama_gqa8
        # a native GQA Llama: num_key_value_heads=8, a KV cache of 8 heads in any server

Outputs: an existing, non-empty --out or --export_hf is refused unless --overwrite; the input
itself never is. Each is written beside its target and swapped in whole, and every check
(including whether HF can hold the export) runs before anything is written.

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
from wgqa_jax.store import hf, params_io

FLAGS = cli.flag_set()
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
flags.DEFINE_string(
  "export_hf",
  None,
  "write a transformers directory here (T5: KV heads "
  "expanded to MHA; Llama: native GQA, num_key_value_heads=G)",
  flag_values=FLAGS,
)
flags.DEFINE_bool("overwrite", False, "replace an existing --out / --export_hf", flag_values=FLAGS)


# what each output holds: --overwrite replaces a directory of that kind, nothing else
WRITES = {"out": params_io.CONFIG_FILE, "export_hf": "config.json"}


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


def check_outputs(a) -> None:
  """Refuse an output that would clobber: the input itself (compared by real path), the other
  output, anything that exists (a file, a non-empty directory) without --overwrite, and with it
  anything but what this tool writes there."""
  given = a.hf or a.params
  source = os.path.realpath(given) if os.path.exists(given) else None
  targets = [(f, getattr(a, f)) for f in ("out", "export_hf") if getattr(a, f)]
  if len(targets) == 2 and os.path.realpath(a.out) == os.path.realpath(a.export_hf):
    raise UserError("--out and --export_hf are the same directory; pass two")
  for flag, path in targets:
    full = os.path.realpath(path)
    if source and (
      full == source or source.startswith(full + os.sep) or full.startswith(source + os.sep)
    ):
      raise UserError(
        f"--{flag}={path} would overwrite the input {a.hf or a.params}; write elsewhere"
      )
    if os.path.isfile(full) or (os.path.isdir(full) and os.listdir(full)):
      if not a.overwrite:
        raise UserError(f"--{flag}={path} exists; pass --overwrite to replace it")
      if os.path.isfile(full):
        raise UserError(f"--{flag}={path} is a file; pass a directory")
      if not os.path.exists(os.path.join(full, WRITES[flag])):
        raise UserError(
          f"--{flag}={path} holds no {WRITES[flag]}: --overwrite replaces only what this tool "
          f"writes there; name a new or empty directory"
        )


def main(argv: list[str] | None = None) -> int:
  a = cli.parse(FLAGS, argv, "wgqa_jax.convert")
  if bool(a.hf) == bool(a.params):
    raise UserError("pass exactly one of --hf=DIR_OR_ID and --params=DIR")
  if not a.out and not a.export_hf:
    raise UserError("nothing to write: pass --out and/or --export_hf")
  check_flags(a)
  check_outputs(a)
  convert.check(a.variant, a.calibration)
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
  if a.export_hf:
    hf.exportable(params, cfg)  # can HF hold it? refuse before writing anything
  if a.out:
    params_io.save(params, cfg, a.out, settings)
    print(f"wrote {a.out}")
  if a.export_hf:
    hf.save_hf(params, cfg, a.export_hf, settings)
    print(f"wrote HF directory {a.export_hf}")
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
