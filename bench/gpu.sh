#!/usr/bin/env bash
# bench/gpu.sh: the CUDA paths of training and inference, on a GPU machine with torch and timm but no
# internet, in under 8 minutes. Writes reports/gpu/ (or $OUT/gpu/ where OUT is set):
#   1. a small synthetic folder; every stage trained for one epoch per fold (2 folds) with the GPU
#      configs (configs/gpu/*.json, pretrained off: no hub) and AMP;
#   2. inference per study by stage through the engine, fp32 against fp16 autocast.
# Packages the machine lacks travel as wheels in .whl/ (pydicom, xgboost-cpu >= 3.1 next to a scikit-learn
# >= 1.6; see docs/benchmarks.md).
# PROFILE=real SIZE_SCALE=1 writes the real-profile folder instead (the real data's geometry and sizes).
# LUMBAR_GPU_SMOKE=1 runs the same steps with the tiny CPU configs (a dry run of this script on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT=${OUT:-reports}/gpu
mkdir -p "$REPORT"
PY=${PY:-python3}
if ! $PY -c "import pydicom, xgboost" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lumbar-site .whl/*.whl
  export PYTHONPATH=/tmp/lumbar-site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
SMOKE=${LUMBAR_GPU_SMOKE:-0}
W=${WORK:-/tmp/lumbar-gpu}; D=$W/data; R=$W/run; C=$W/cache; WT=$W/weights
rm -rf "$W"; mkdir -p "$W"
DEVICE=cuda; [ "$SMOKE" = 1 ] && DEVICE=cpu
STUDIES=${STUDIES:-48}
cfg() { [ "$SMOKE" = 1 ] && echo "" || echo "--config configs/gpu/$1.json"; }
TINY_MT=""; TINY_SEQ=""
if [ "$SMOKE" = 1 ]; then
  TINY_MT="kp_input=48 patch_sag=16 patch_axial=16 patch_input=32 batch_size=4"
  TINY_SEQ="n_frames=5 frame_size=32 d_model=32 layers=1 heads=2 batch_size=4 kp_size=32 patch_side=12 patch_input=16"
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; } | tee "$REPORT/gpu.txt"
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$REPORT/gpu.txt"

stage() {  # name, then the command; one line of timing per stage
  local name=$1; shift
  local t0=$(date +%s%N)
  "$@" > "$W/$name.log" 2>&1 || { echo "stage $name FAILED"; tail -30 "$W/$name.log"; cp "$W/$name.log" "$REPORT/"; exit 1; }
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "| $name | $((ms / 1000)).$(( (ms % 1000) / 100 )) |" | tee -a "$REPORT/stages.md"
}
echo "| stage | seconds |" > "$REPORT/stages.md"; echo "|---|---|" >> "$REPORT/stages.md"
T="$PY -m lumbar train --data $D --run $R --folds 2"
stage synth $PY -m lumbar synth --out $D --studies $STUDIES --test-studies ${TEST_STUDIES:-16} --workers 8 --profile ${PROFILE:-default} --size-scale ${SIZE_SCALE:-1}
stage prior $T --model prior
stage slice_select $T --model slice_select cache_dir=$C workers=8
stage crops $T --model crops $(cfg crops) cache_dir=$C
stage superres $T --model superres $(cfg superres) epochs=1
stage multitask $T --model multitask $(cfg multitask) pretrained=false epochs=1 cache_dir=$C device=$DEVICE $TINY_MT
stage sequence $T --model sequence $(cfg sequence) pretrained=false epochs=1 cache_dir=$C device=$DEVICE $TINY_SEQ
stage ensemble $T --model ensemble
stage export $PY -m lumbar export --run $R --data $D --out $WT
stage bench $PY -m lumbar bench --data $D --run $R --weights $WT --device $DEVICE --studies 8 --out "$REPORT/bench.md"

# One AMP epoch of each torch model: its seconds, and the proof it ran on the GPU with AMP.
$PY - "$R" <<'PY' | tee "$REPORT/train.md"
import json, sys, pathlib, csv
run = pathlib.Path(sys.argv[1])
print("| model | device | amp | epoch seconds (fold 0) | train loss | val score |")
print("|---|---|---|---|---|---|")
for m in ("superres", "multitask", "sequence"):
    log = run / m / ("log.csv" if m == "superres" else "fold0/log.csv")
    row = list(csv.DictReader(open(log)))[0]
    print(f"| {m} | {row['device']} | {row['amp']} | {float(row['seconds']):.1f} | "
          f"{float(row['train_loss']):.4f} | {float(row['val_score']):.4f} |")
PY
cat "$REPORT/bench.md"
