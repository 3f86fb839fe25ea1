#!/usr/bin/env bash
# Several GPU VMs: run this on every host with the same CONFIG/WORKDIR (a shared filesystem or
# bucket path for WORKDIR) and its own JAX_PROCESS_ID. Host 0's address is the coordinator.
#   JAX_COORDINATOR_ADDRESS=10.0.0.2:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
#   CONFIG=configs/paper.py:wgqa,base WORKDIR=/mnt/shared/wgqa_base launch/multihost.sh
# train.py calls jax.distributed.initialize() from these variables.
source "$(dirname "$0")/common.sh"
require_config
require_gpu
[[ -n "${JAX_COORDINATOR_ADDRESS:-}" ]] || die "set JAX_COORDINATOR_ADDRESS=host0_ip:port"
[[ -n "${JAX_NUM_PROCESSES:-}" ]] || die "set JAX_NUM_PROCESSES (number of hosts)"
[[ -n "${JAX_PROCESS_ID:-}" ]] || die "set JAX_PROCESS_ID (0 .. JAX_NUM_PROCESSES-1) on each host"
(( JAX_PROCESS_ID < JAX_NUM_PROCESSES )) || die "JAX_PROCESS_ID=$JAX_PROCESS_ID >= JAX_NUM_PROCESSES"
echo "host $JAX_PROCESS_ID of $JAX_NUM_PROCESSES, coordinator $JAX_COORDINATOR_ADDRESS: $CONFIG -> $WORKDIR"
export JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID
run python -m wgqa_jax.train --config="$CONFIG" --workdir="$WORKDIR" "$@"
