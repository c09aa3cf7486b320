#!/usr/bin/env bash
# The GPU measurements of README "Many runners, many machines" and "Streaming" as one prepared
# script for a single-GPU machine (about 10 minutes; no dataset needs to be on the machine):
# 1. cells/hour of the cpu profile's deviations grid with 1, 2, 4 and 8 workers on the one GPU,
#    on a synthetic Imagenette-sized ImageFolder;
# 2. a paper-profile cell (full AlexNet, batch 128) streaming its batches from local disk against
#    the cache held in GPU memory, on 20,000 synthetic ImageNet-sized JPEGs of 1000 classes.
# Usage: bash results/gpu/scale.sh   (logs and JSON go to $OUT, else results/gpu/)
set -u
out=${OUT:-results/gpu}
mkdir -p "$out"
work=$(mktemp -d)
python3 -m tools.fakedata "$work/fake" --classes 10 --train 947 --val 392 --size 160 > "$out/workers.log" 2>&1
python3 preprocess.py --profile cpu --data-root "$work/fake" --cache-dir "$work/cache" >> "$out/workers.log" 2>&1
for n in 1 2 4 8; do
  python3 -m tools.gridrate --seconds 75 -- --grid deviations --profile cpu --data-root "$work/fake" \
    --cache-dir "$work/cache" --workers $n --seeds 2 2>&1 | tail -n 1 | tee -a "$out/workers.log"
done
python3 -m tools.streambench --profile paper --device cuda --epochs 3 --json "$out/stream.json" \
  > "$out/stream.log" 2>&1; echo "streambench rc=$?"
tail -n 4 "$out/stream.log"
