#!/usr/bin/env bash
# The GPU checks of README "Speed" and "Streaming" as one prepared script for a single-GPU machine
# (about 8 minutes; no dataset, MLflow or albumentations needs to be on the machine):
# 1. every toggle's variant trained on CUDA (tools.gpucheck), and what `precision: auto` resolves to;
# 2. the engine's training rows at paper size, eager and torch.compile, batch 128 and 512;
# 3. a `paper` cell streaming its batches from local disk against the cache held in GPU memory,
#    on 20,000 synthetic ImageNet-sized JPEGs of 1000 classes.
# Each step has its own time limit, so one that hangs does not take the others with it.
# Usage: bash results/gpu/measure.sh   (logs and JSON go to $OUT, else results/gpu/; committed as results/gpu/h200-*)
set -u
out=${OUT:-results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c "import torch; from core import runtime
d = torch.device('cuda'); print('torch', torch.__version__, '| precision auto ->', runtime.resolve_precision('auto', d),
'|', runtime.describe(runtime.machine()))"; } > "$out/machine.log" 2>&1
cat "$out/machine.log"
timeout 170 python3 -m tools.gpucheck > "$out/gpucheck.log" 2>&1; echo "gpucheck rc=$?"
tail -n 3 "$out/gpucheck.log"
timeout 170 python3 -m tools.bench --gpu-synthetic --gpu-only "uint8 cache on GPU" --seconds 6 \
  --json "$out/gpu-engine.json" > "$out/gpu-engine.log" 2>&1; echo "engine rc=$?"
tail -n 8 "$out/gpu-engine.log"
timeout 190 python3 -m tools.streambench --profile paper --device cuda --epochs 3 --json "$out/stream.json" \
  > "$out/stream.log" 2>&1; echo "streambench rc=$?"
tail -n 4 "$out/stream.log"
