#!/usr/bin/env bash
# The main job end to end on the built-in synthetic sample (the real datasets cannot be downloaded here):
# raw data in FinTabNet's exact layout -> train/val caches -> verify / info / show -> streaming benchmark
# -> train the tiny Cascade R-CNN on CPU -> COCO evaluation -> predictions drawn on a crop.
# Usage: bash examples/end_to_end.sh [OUT_DIR]   (default: demo_run; re-running resumes / reuses)
set -euo pipefail
OUT=${1:-demo_run}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
STEPS=${STEPS:-60}
mkdir -p "$OUT"

echo "== 1. synthetic raw dataset (FinTabNet layout: one-page PDFs + jsonl)"
ddcache sample fintabnet --out "$OUT/raw" --pages 80 --seed 0 --overwrite

echo "== 2. build the caches (all cores, resumable, published atomically)"
mkdir -p "$OUT/cache"
ddcache build fintabnet --source "$OUT/raw" --split train --out "$OUT/cache/train" --overwrite
ddcache build fintabnet --source "$OUT/raw" --split val --out "$OUT/cache/val" --overwrite

echo "== 3. check and look"
ddcache verify "$OUT/cache/train" "$OUT/cache/val" --quiet
ddcache info "$OUT/cache/train"
ddcache show "$OUT/cache/train" --index 0 --out "$OUT/train_0.png"

echo "== 4. stream one epoch as training reads it (exactly once per sample), then with tiny.yaml's preprocessing"
ddcache bench "$OUT/cache/train" --epoch --workers 2
ddcache bench "$OUT/cache/train" --epoch --workers 2 --config "$HERE/configs/tiny.yaml"

echo "== 5. train the tiny detector on CPU ($STEPS steps; re-run to continue from the checkpoint)"
ddtrain train --config "$HERE/configs/tiny.yaml" --train "$OUT/cache/train" --val "$OUT/cache/val" \
    --logdir "$OUT/train" --steps "$STEPS" --workers 1 --override TRAIN.STEPS_PER_EPOCH=20 --eval-max-datapoints 8

echo "== 6. evaluate (COCO, maxDets 50/200/600) and export an inference-only model"
ddtrain export --weights "$OUT/train" --out "$OUT/model.npz" --config "$HERE/configs/tiny.yaml" --overwrite
ddtrain eval --config "$HERE/configs/tiny.yaml" --cache "$OUT/cache/val" --weights "$OUT/model.npz" --out "$OUT/eval"

echo "== 7. predict on a table crop"
python - "$OUT" <<'PY'
import sys, cv2
from ddcache.store import CacheReader
out = sys.argv[1]
cv2.imwrite(f"{out}/val_0.png", CacheReader(f"{out}/cache/val").get(0)["image"])
PY
ddtrain predict --config "$HERE/configs/tiny.yaml" --weights "$OUT/model.npz" --image "$OUT/val_0.png" --out "$OUT/predictions"
echo "done: see $OUT/ (train_0.png, eval/report.txt, predictions/)"
