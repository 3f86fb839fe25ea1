#!/usr/bin/env bash
# All GPUs of one host, data parallel (add --config.mesh.fsdp=-1 --config.mesh.data=1 to shard params and
# optimizer state over them, FSDP; --config.mesh.model=2 for 2-way tensor parallel; plan first:
# python -m wgqa_jax.plan --config=... --devices=N).
#   CONFIG=configs/paper.py:wgqa,base WORKDIR=/tmp/wgqa_base launch/multi_gpu.sh --config.optim.batch_size=64
source "$(dirname "$0")/common.sh"
require_config
require_gpu
n=$(python -c "import jax; print(jax.device_count())")
echo "one host, $n GPUs: $CONFIG -> $WORKDIR (global batch is split over the data axis)"
run python -m wgqa_jax.train --config="$CONFIG" --workdir="$WORKDIR" "$@"
