#!/usr/bin/env bash
# The GPU measurements in one go (about 5-8 minutes on one node): one GPU (with torch.compile timed),
# then every GPU of the node under torchrun. Writes benchmarks/results/gpu.{json,md} and
# gpu_ddpN.{json,md}; CPU figures never go there (gpu_speed.py refuses a machine without CUDA).
#   bash benchmarks/gpu.sh              # from the repository root, after scripts/setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
WORK="${WORK:-runs/gpu_speed}"
GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$GPUS" -lt 1 ]; then
    echo "benchmarks/gpu.sh: no CUDA device visible; run it on a GPU machine" >&2
    exit 2
fi
"$PYTHON" benchmarks/gpu_speed.py --compile --work "$WORK" "$@"
if [ "$GPUS" -gt 1 ]; then
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" benchmarks/gpu_speed.py \
        --work "$WORK" "$@"
fi
