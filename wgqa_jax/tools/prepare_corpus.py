"""python -m wgqa_jax.prepare_corpus: prepare local text files once as a random-access corpus
for continued pretraining (the library: wgqa_jax.data.corpus_writer).

    python -m wgqa_jax.prepare_corpus --input='/data/c4/en/*.json.gz' --out=/data/c4_corpus
    python -m wgqa_jax.train --config=configs/gqa_paper.py:gqa,xl \
        --config.data.dataset=/data/c4_corpus --workdir=/tmp/gqa_xl_uptrain

Inputs: JSON lines, Parquet or plain text (--input=GLOB, repeated for more); output: array_record
shards and corpus.json, written whole or not at all (wgqa_jax.data.corpus_writer says how).
"""

from __future__ import annotations

from absl import flags

from wgqa_jax.core import cli
from wgqa_jax.core.errors import UserError
from wgqa_jax.data import corpus_writer

FLAGS = cli.flag_set()
flags.DEFINE_multi_string(
  "input", None, "input files: a glob (repeat the flag for more)", flag_values=FLAGS
)
flags.DEFINE_string("out", None, "the corpus directory to write", flag_values=FLAGS)
flags.DEFINE_string(
  "text_field", "text", "JSON lines / Parquet: the field holding the text", flag_values=FLAGS
)
flags.DEFINE_enum(
  "text_unit",
  "line",
  ["line", "paragraph", "file"],
  "plain text: what one document is",
  flag_values=FLAGS,
)
flags.DEFINE_integer(
  "validation_every", 200, "hold out every N-th document as validation", flag_values=FLAGS
)
# array_record reads slow down with the shard: 1 ms a document at 1 GB, 0.1 ms at 64 MB
flags.DEFINE_float("shard_mb", 64, "train shard size (MB of text)", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "replace an existing --out", flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
  a = cli.parse(FLAGS, argv, "wgqa_jax.prepare_corpus")
  if not a.input or not a.out:
    raise UserError("pass --input=GLOB (repeat for more) and --out=DIR")
  m = corpus_writer.prepare(
    corpus_writer.input_files(a.input),
    a.out,
    a.text_field,
    a.text_unit,
    a.validation_every,
    a.shard_mb,
    a.overwrite,
  )
  s, empty = m["splits"], m["empty_documents_skipped"]
  print(
    f"{a.out}: {s['train']['documents']} train and {s['validation']['documents']} "
    f"validation documents ({(s['train']['bytes'] + s['validation']['bytes']) / 1e6:.1f} MB"
    f" of text{f', {empty} empty skipped' if empty else ''})."
    f" Train on it: --config.data.dataset={a.out}"
  )
  return 0


if __name__ == "__main__":
  cli.run(main, FLAGS)
