"""T5-small uptrained into WGQA (weights init 0.5), G=4 on CNN/DailyMail (WGQA paper defaults).

    python -m wgqa_jax.train --config=configs/wgqa_small.py --workdir=/tmp/wgqa_small

The quick-start name of configs/paper.py:wgqa,small, which it reads (every other paper run is
configs/paper.py:VARIANT,SIZE). Needs the HF checkpoint (t5-small) and TFDS cnn_dailymail
(array_record). Paper, T5-small after 3 epochs: MHA R1 41.12, MQA 38.79, GQA 40.31, WGQA 40.38,
RandWGQA 39.64.
"""

import importlib.util
import os


def get_config():
  # config files are not a package: the paper's file is loaded from beside this one
  spec = importlib.util.spec_from_file_location(
    "paper_config_file", os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper.py")
  )
  paper = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(paper)
  return paper.get_config("wgqa,small")
