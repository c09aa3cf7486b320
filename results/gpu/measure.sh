#!/usr/bin/env bash
# The GPU measurements of README "Speed" as one prepared script for a single-GPU machine (about
# 15 minutes): every toggle's variant trained on CUDA, then the paper-size throughput rows.
# Usage: bash results/gpu/measure.sh   (logs and JSON go to $OUT, else results/gpu/)
set -u
out=${OUT:-results/gpu}
mkdir -p "$out"
python3 -m tools.gpucheck > "$out/gpucheck.log" 2>&1; echo "gpucheck rc=$?"
python3 -m tools.bench --gpu-synthetic --gpu-only "uint8 cache on GPU" --seconds 8 --json "$out/gpu-engine.json" \
  > "$out/gpu-engine.log" 2>&1; echo "engine rc=$?"
python3 -m tools.bench --gpu-synthetic --seconds 6 --json "$out/gpu.json" > "$out/gpu.log" 2>&1; echo "bench rc=$?"
tail -n 25 "$out/gpu-engine.log"
