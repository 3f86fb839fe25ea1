# Shared by the launch scripts: checks and the XLA flags we use on NVIDIA GPUs.
# Sourced, not run.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

require_config() {
  [[ -n "${CONFIG:-}" ]] || die "set CONFIG, e.g. CONFIG=configs/wgqa_small.py"
  [[ -f "${CONFIG%%:*}" ]] || die "config file not found: ${CONFIG%%:*}"  # CONFIG=FILE[:ARG]
  [[ -n "${WORKDIR:-}" ]] || die "set WORKDIR (checkpoints and metrics go there; reusing it resumes)"
}

require_gpu() {
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver on this machine"
  python -c "import jax; assert jax.default_backend() == 'gpu', jax.default_backend()" 2>/dev/null \
    || die "JAX does not see a GPU: pip install -e '.[gpu]' (jax[cuda12])"
}

# XLA flags for GPU training (override by exporting XLA_FLAGS yourself):
#   --xla_gpu_enable_latency_hiding_scheduler  overlap collectives (data-parallel all-reduce) with compute
#   --xla_gpu_enable_triton_gemm=false         cuBLAS GEMMs: steadier for T5's shapes
# XLA_PYTHON_CLIENT_MEM_FRACTION=.90 leaves room for the NCCL and cuDNN workspaces.
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-.90}"

run() {
  echo "+ $*"
  exec "$@"
}
