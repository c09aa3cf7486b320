#!/usr/bin/env bash
# The GPU measurements of README "Many runners, many machines" and "Streaming" as one prepared
# script for a single-GPU machine (about 10 minutes; no dataset needs to be on the machine):
# 1. cells/hour of the cpu profile's deviations grid with 1, 2, 4 and 8 workers on the one GPU,
#    on a synthetic Imagenette-sized ImageFolder;
# 2. a paper-profile cell (full AlexNet, batch 128) streaming its batches from local disk against
#    the cache held in GPU memory, on 20,000 synthetic ImageNet-sized JPEGs of 1000 classes.
# Usage: bash results/gpu/scale.sh   (logs and JSON go to $OUT, else results/gpu/)
#   WORKERS="1 4" SECONDS_EACH=40 STREAM=0 bash results/gpu/scale.sh   (a shorter step 1, no step 2)
# Step 1 needs MLflow. On a GPU machine without it and without a network, bring the wheels of
# results/gpu/wheels.txt (MLflow's client and what it imports, for CPython 3.12, beside what a
# PyTorch image holds; about 33 MB), fetched where pip works:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl -r results/gpu/wheels.txt
# and this script installs them into /tmp/site first. (The `deviations` grid needs neither Optuna
# nor albumentations.)
set -u
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
out=${OUT:-results/gpu}
mkdir -p "$out"
work=$(mktemp -d)
python3 -m tools.fakedata "$work/fake" --classes 10 --train 947 --val 392 --size 160 > "$out/workers.log" 2>&1
python3 preprocess.py --profile cpu --data-root "$work/fake" --cache-dir "$work/cache" >> "$out/workers.log" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$out/workers.log" 2>&1
for n in ${WORKERS:-1 2 4 8}; do
  echo "workers $n:" >> "$out/workers.log"
  python3 -m tools.gridrate --seconds ${SECONDS_EACH:-75} -- --grid deviations --profile cpu --data-root "$work/fake" \
    --cache-dir "$work/cache" --workers $n --seeds 2 2>&1 | tail -n 1 | tee -a "$out/workers.log"
done
[ "${STREAM:-1}" = 0 ] && exit 0
python3 -m tools.streambench --profile paper --device cuda --epochs 3 --json "$out/stream.json" \
  > "$out/stream.log" 2>&1; echo "streambench rc=$?"
tail -n 4 "$out/stream.log"
