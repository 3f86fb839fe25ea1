"""Streamed, sharded loading: checkpoints read tensor by tensor (memory-mapped, bfloat16 too),
converted one attention module at a time and placed into FSDP shardings, equal to loading whole."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util
from hf_llama import hf_model, save

from wgqa_jax.core import sharding
from wgqa_jax.grouping import variants
from wgqa_jax.models import llama
from wgqa_jax.store import hf, params_io, streaming
from wgqa_jax.store.resolve import resolve
from wgqa_jax.store.tensor_files import SafetensorsFile
from wgqa_jax.training import steps as train_step


def test_a_bfloat16_checkpoint_reads_as_torch_holds_it(tmp_path):
  model = hf_model("llama", 4).to(torch.bfloat16)
  path = save(model, tmp_path / "bf16")
  reader = hf.Reader(path)
  sd = model.state_dict()
  for key in ("model.layers.0.self_attn.k_proj.weight", "lm_head.weight"):
    assert reader[key].dtype.name == "bfloat16"
    np.testing.assert_array_equal(np.asarray(reader[key], np.float32), sd[key].float().numpy())
  params, cfg = hf.from_hf(path)
  np.testing.assert_array_equal(
    params["layers_1"]["mlp"]["down"], sd["model.layers.1.mlp.down_proj.weight"].float().T
  )


@pytest.mark.parametrize("variant", ["gqa", "randwgqa"])
def test_streamed_conversion_onto_fsdp_equals_converting_the_whole_tree(tmp_path, variant):
  path = save(hf_model("llama", 4, seed=3), tmp_path / "hf")
  want, want_cfg = variants.from_mha(*hf.from_hf(path), variant, 2, seed=5)
  source = resolve(path).open_weights()
  cfg, convert = variants.converter(source.cfg, variant, 2, seed=5)
  assert cfg == want_cfg
  mesh = sharding.make_mesh(1, 4, 2)
  shardings = train_step.param_shardings(cfg, mesh)
  got = streaming.load_sharded(source, cfg, shardings, convert, desc=None)
  flat_got, flat_want = traverse_util.flatten_dict(got), traverse_util.flatten_dict(want)
  assert flat_got.keys() == flat_want.keys()
  for k, x in flat_got.items():
    assert x.sharding == traverse_util.flatten_dict(shardings)[k]
    np.testing.assert_array_equal(np.asarray(x), flat_want[k])


def test_our_params_dir_streams_too_and_a_bad_file_is_named(tmp_path):
  cfg = llama.LlamaConfig(
    **{
      "vocab_size": 64,
      "hidden_size": 16,
      "intermediate_size": 24,
      "num_layers": 2,
      "num_heads": 4,
      "head_dim": 4,
    }
  )
  params = jax.device_get(llama.init_params(cfg, jax.random.PRNGKey(0)))
  params, cfg = variants.from_mha(params, cfg, "wgqa", 2)
  params_io.save(params, cfg, str(tmp_path / "p"))
  source = resolve(str(tmp_path / "p")).open_weights()
  got = streaming.load_sharded(
    source, cfg, train_step.param_shardings(cfg, sharding.make_mesh(2, 4, 1)), desc=None
  )
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), b)
  file = tmp_path / "p" / params_io.PARAMS_FILE
  data = file.read_bytes()
  file.write_bytes(data[: len(data) - 100])
  with pytest.raises(ValueError, match="runs past the end of the file"):
    params_io.Reader(str(tmp_path / "p"))
  file.write_bytes(b"\x00" * 64)
  with pytest.raises(ValueError, match="not a safetensors file"):
    SafetensorsFile(str(file))


LOAD = """
import os, resource, sys, jax, numpy as np
from wgqa_jax.core import sharding
from wgqa_jax.grouping import variants
from wgqa_jax.store import streaming
from wgqa_jax.store.resolve import resolve
from wgqa_jax.training import steps as train_step
def rss():  # resident now, and the peak so far, bytes
  kb = dict(l.split(":") for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM")))
  return int(kb["VmRSS"].split()[0]) * 1024, int(kb["VmHWM"].split()[0]) * 1024
source = resolve(sys.argv[1]).open_weights()
cfg, convert = variants.converter(source.cfg, "gqa", 2)
shardings = train_step.param_shardings(cfg, sharding.make_mesh(1, 8, 1))
jax.block_until_ready(jax.device_put(np.zeros((8, 8)), shardings["embed"]["embedding"]))
before = rss()[0]
params = jax.block_until_ready(streaming.load_sharded(source, cfg, shardings, convert, desc=None))
placed = sum(x.nbytes for x in jax.tree.leaves(params))
now, peak = rss()
print(before, peak, now, placed)
"""


def test_peak_host_memory_while_loading_is_about_one_module_not_the_model(tmp_path):
  """A 192 MB bf16 checkpoint (384 MB in f32) loads onto 8 fake devices (whose buffers are host
  memory here) with a transient of well under the model's size."""
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(0)
  model = LlamaForCausalLM(
    LlamaConfig(
      vocab_size=1024,
      hidden_size=1024,
      intermediate_size=2048,
      num_hidden_layers=12,
      num_attention_heads=8,
      num_key_value_heads=8,
      head_dim=128,
    )
  ).to(torch.bfloat16)
  path = save(model, tmp_path / "hf")
  size = os.path.getsize(os.path.join(path, "model.safetensors"))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  r = subprocess.run(
    [sys.executable, "-c", LOAD, path], capture_output=True, text=True, env=env, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]
  before, peak, now, placed = map(int, r.stdout.split()[-4:])
  assert placed > 1.3 * size  # the GQA-2 params in float32, resident on the fake devices
  transient = peak - before - placed
  assert transient < 0.25 * 2 * size, (transient, size)  # not the model in float32
