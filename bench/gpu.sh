#!/usr/bin/env bash
# GPU benchmark (issue 7): the full dn-piqa preset, random weights, five-crop and centre-crop, bf16.
# Run from the repository root on a machine with an NVIDIA GPU; takes about 5 minutes; writes
# ${OUT:-bench/out}/gpu_throughput.json and prints images/s, GPU busy share and time waiting for input.
#
#   bash bench/gpu.sh                      # extra arguments go to bench/gpu_throughput.py
#   bash bench/gpu.sh --compile --seconds 30   # torch.compile as well (compiles take minutes: shorter runs)
#
# A machine with torch but without this project's other dependencies needs them as wheels in .whl/ (made with
# `pip download --no-deps` for its Python: open_clip_torch, ftfy, wcwidth, facenet-pytorch); they are installed
# to /tmp/site first.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 DO_NOT_TRACK=true
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
timeout 460 "$PYTHON" bench/gpu_throughput.py --seconds 50 --out "${OUT:-bench/out}/gpu_throughput.json" "$@"
