"""Three small local lm-evaluation-harness tasks (the harness's own readers: `dataset_path: json`
with `data_files`, read through --include_path), shared by the harness and lab tests; the
shipped examples (examples/harness_tasks/) are these, written by `python tests/harness_tasks.py`.

  wgqa_mc   multiple choice (loglikelihood): a document, and its lead sentence among three
  wgqa_ppl  perplexity (loglikelihood_rolling), one document longer than 512 tokens
  wgqa_gen  generation (generate_until): documents cut mid-sentence, 16 new tokens, EOS stops

and two on the standard library corpus's held-out documents (data.dataset=python_stdlib, what
the lab's offline MHA models pretrain on; written from this machine's Python):

  stdlib_mc   which line comes next: 400 characters of a document, its next line among four
              (three from other held-out documents): a HellaSwag-like cloze on code and prose
  stdlib_ppl  perplexity of the documents' first 2000 characters
"""

import json
import os
import random
import sys

from wgqa_jax.data import corpora, tasks

TASKS = ["wgqa_mc", "wgqa_ppl", "wgqa_gen"]
NEW_TOKENS = 16


def write_tasks(folder, data_prefix=None):
  """The three task YAMLs and their JSON-lines data in `folder` (a pathlib.Path), from the
  built-in task's test split (what the tiny models train on). data_prefix: how the YAMLs name
  the data folder (the harness reads data_files from the working directory; default: the
  folder's absolute path)."""
  folder.mkdir(parents=True, exist_ok=True)
  prefix = data_prefix or str(folder.absolute())
  pairs = [tasks.source("synthetic_summarize", "test", 8)[i] for i in range(8)]
  leads = [t for _, t in pairs]
  rows = {
    "mc": [
      {"doc": d, "choices": [leads[i], leads[(i + 1) % 8], leads[(i + 3) % 8]], "label": 0}
      for i, (d, _) in enumerate(pairs[:6])
    ],
    "ppl": [{"text": d} for d, _ in pairs[:3]] + [{"text": " ".join(d for d, _ in pairs) * 4}],
    # documents cut mid-sentence: a decoder-only model continues them (after a whole one, the
    # end of its input, it says EOS at once)
    "gen": [{"prompt": " ".join(d.split()[:9]), "answer": t} for d, t in pairs[:5]],
  }
  for name, data in rows.items():
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))

  def source(name):
    return (
      f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {prefix}/{name}.jsonl\n"
      "test_split: test\n"
    )

  def metric(name, agg, up):
    return f"  - metric: {name}\n    aggregation: {agg}\n    higher_is_better: {up}\n"

  (folder / "mc.yaml").write_text(
    "task: wgqa_mc\n" + source("mc") + "output_type: multiple_choice\n"
    'doc_to_text: "{{doc}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "{{choices}}"\n'
    "metric_list:\n" + metric("acc", "mean", "true") + metric("acc_norm", "mean", "true")
  )
  (folder / "ppl.yaml").write_text(
    "task: wgqa_ppl\n" + source("ppl") + "output_type: loglikelihood_rolling\n"
    'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
    + metric("word_perplexity", "weighted_perplexity", "false")
    + metric("bits_per_byte", "bits_per_byte", "false")
  )
  (folder / "gen.yaml").write_text(
    "task: wgqa_gen\n" + source("gen") + "output_type: generate_until\n"
    'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
    f"generation_kwargs:\n  until: []\n  max_gen_toks: {NEW_TOKENS}\n  do_sample: false\n"
    "metric_list:\n" + metric("exact_match", "mean", "true")
  )
  return str(folder)


def write_stdlib_tasks(folder, data_prefix=None, per_document: int = 4, seed: int = 0):
  """stdlib_mc and stdlib_ppl (the module's docstring) in `folder`, as write_tasks."""
  folder.mkdir(parents=True, exist_ok=True)
  prefix = data_prefix or str(folder.absolute())
  docs = corpora.PythonStdlib("validation")
  texts = [docs[i] for i in range(len(docs))]
  rng = random.Random(seed)
  lines = [[l for l in t.splitlines(keepends=True) if len(l.strip()) >= 20] for t in texts]
  mc = []
  for d, text in enumerate(texts):
    starts = [i for i in range(400, len(text)) if text[i - 1] == "\n"]
    starts = [i for i in starts if len(text[i:].split("\n", 1)[0].strip()) >= 20]
    for cut in sorted(rng.sample(starts, min(per_document, len(starts)))):
      true = text[cut:].split("\n", 1)[0] + "\n"
      others = [l for e, ls in enumerate(lines) if e != d for l in ls]
      choices = [true] + rng.sample(others, 3)
      order = list(range(4))
      rng.shuffle(order)
      mc.append(
        {"context": text[cut - 400 : cut], "choices": [choices[k] for k in order],
         "label": order.index(0)}
      )  # fmt: skip
  rows = {"stdlib_mc": mc, "stdlib_ppl": [{"text": t[:2000]} for t in texts]}
  for name, data in rows.items():
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
  source = (
    "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {prefix}/{name}.jsonl\n"
    "test_split: test\n"
  )
  metric = "  - metric: {0}\n    aggregation: {1}\n    higher_is_better: {2}\n"
  (folder / "stdlib_mc.yaml").write_text(
    "task: stdlib_mc\n" + source.format(prefix=prefix, name="stdlib_mc")
    + "output_type: multiple_choice\n"
    'doc_to_text: "{{context}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "{{choices}}"\n'
    'target_delimiter: ""\nmetric_list:\n'
    + metric.format("acc", "mean", "true") + metric.format("acc_norm", "mean", "true")
  )  # fmt: skip
  (folder / "stdlib_ppl.yaml").write_text(
    "task: stdlib_ppl\n" + source.format(prefix=prefix, name="stdlib_ppl")
    + "output_type: loglikelihood_rolling\n"
    'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
    + metric.format("word_perplexity", "weighted_perplexity", "false")
    + metric.format("bits_per_byte", "bits_per_byte", "false")
  )  # fmt: skip
  return str(folder)


if __name__ == "__main__":  # the shipped examples, read from the repository's root
  import pathlib

  root = pathlib.Path(__file__).resolve().parent.parent
  os.chdir(root)
  out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "examples/harness_tasks")
  write_tasks(out, "examples/harness_tasks")
  write_stdlib_tasks(out, "examples/harness_tasks")
