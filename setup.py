"""wgqa_jax: T5 and Llama-architecture models with grouped key/value attention in JAX/Flax."""

from setuptools import find_packages, setup

# Serving engines, run by the tests on what we export (tests/engines; wgqa_jax.store.gguf,
# wgqa_jax.decoding.llama_cpp). llama-cpp-python builds llama.cpp from source the first time
# (about 5 minutes on 2 cores; pip keeps the wheel, later installs take seconds). Its version
# names the llama.cpp converter we fetch (store/gguf.py: LLAMA_CPP_PYTHON).
ENGINES = [
  "llama-cpp-python==0.3.36",
  "ctranslate2==4.8.5",  # CPU wheels; its converter reads our HF exports
  "torch==2.13.0",  # llama.cpp's converter imports torch and transformers
  "transformers>=4.40",
  "sentencepiece>=0.2",
]

# EleutherAI's lm-evaluation-harness: our models as its "wgqa_jax" model (wgqa_jax.lab.harness,
# python -m wgqa_jax.harness) and the lab's --eval_tasks. Pinned: the tests hold our model equal
# to its HF model, whose conventions move between releases. accelerate: its HF model needs it.
HARNESS = ["lm_eval==0.4.13", "accelerate==1.16.0"]

setup(
  name="wgqa_jax",
  version="0.1.0",
  description="Uptrain MHA checkpoints (T5, Llama, Mistral) into GQA / MQA / WGQA and calibrated "
  "grouped models with JAX and Flax",
  long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
  long_description_content_type="text/markdown",
  packages=find_packages(include=["wgqa_jax", "wgqa_jax.*"]),
  python_requires=">=3.10",
  install_requires=[
    "jax>=0.4.30",
    "flax>=0.10",
    "optax>=0.2",
    "orbax-checkpoint>=0.6",
    "ml-collections>=0.1.1",
    "numpy>=1.26",
    "sentencepiece>=0.2",
    "tensorflow-datasets>=4.9",
    "importlib_resources",  # TFDS's builders need it and do not declare it
    "array_record>=0.5",
    "pyarrow>=14",  # Parquet inputs of wgqa_jax.prepare_corpus
    "grain>=0.2.10",
    "rouge-score>=0.1.2",
    "sacrebleu>=2.4",
    "tqdm>=4.66",
    "safetensors>=0.4",
    "tensorboardX>=2.6",
    "matplotlib>=3.7",
    "scipy>=1.10",
  ],
  extras_require={
    # Conversion from PyTorch .bin files and the HF equivalence tests. torch is pinned: an
    # unpinned torch pulls a multi-GB CUDA build.
    "torch": ["torch==2.13.0", "transformers>=4.40", "safetensors>=0.4"],
    "tf": ["tensorflow-cpu"],
    # pytest-xdist: the suite runs as two workers, one test file each at a time (CI: 2 cores);
    # ruff and import-linter: lint, format and the layers' import contracts (.ci/run)
    "test": [
      "pytest>=8",
      "pytest-xdist>=3.5",
      "torch==2.13.0",
      "transformers>=4.40",
      "nbclient>=0.9",
      "nbformat>=5.9",
      "ipykernel>=6.25",
      "ruff==0.17.6",
      "import-linter==2.17",
      *ENGINES,
      *HARNESS,
    ],
    "engines": ENGINES,
    "harness": HARNESS,
    "gpu": ["jax[cuda12]"],
  },
)
