#!/usr/bin/env bash
# One GPU.   CONFIG=configs/wgqa_small.py WORKDIR=/tmp/wgqa_small launch/single_gpu.sh [--config.section.key=value ...]
source "$(dirname "$0")/common.sh"
require_config
require_gpu
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
echo "single GPU ($CUDA_VISIBLE_DEVICES): $CONFIG -> $WORKDIR"
run python -m wgqa_jax.train --config="$CONFIG" --workdir="$WORKDIR" --config.mesh.data=1 "$@"
