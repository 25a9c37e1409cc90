#!/usr/bin/env bash
# The main job end to end on built-in synthetic data, on CPU:
# synthetic dataset + slide -> train -> export ONNX -> infer the slide -> mask.tif, overlay PNG, F1 vs truth.
set -euo pipefail
OUT=${1:-demo_out}
EPOCHS=${DEMO_EPOCHS:-8}
mkdir -p "$OUT"
start=$(date +%s)

echo "== 1/5 synthetic dataset and slide"
[ -f "$OUT/dataset/dataset.json" ] || segcls-synth dataset -o "$OUT/dataset" --seed 0
[ -f "$OUT/slide.tif" ] || segcls-synth slide -o "$OUT/slide.tif" --width 6144 --height 4096 --mpp 0.5 --seed 7 \
    --mask "$OUT/slide_truth.tif"

echo "== 2/5 train (S+C, 10% of the segmentation tiles, $EPOCHS epochs)"
segcls-train "$OUT/dataset" -o "$OUT/run" --setting S+C --seg-fraction 0.1 --epochs "$EPOCHS" --device cpu \
    --overwrite

echo "== 3/5 export to ONNX (verified against PyTorch)"
segcls-export "$OUT/run/best.pt" -o "$OUT/model.onnx" --overwrite

echo "== 4/5 whole-slide inference"
segcls-infer "$OUT/slide.tif" -o "$OUT/mask.tif" --model "$OUT/model.onnx" --overwrite \
    --overlay "$OUT/overlay.png" --summary "$OUT/summary.json" --truth "$OUT/slide_truth.tif"

echo "== 5/5 done in $(( $(date +%s) - start )) s"
python - "$OUT/summary.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["truth"]
per_class = ", ".join(f"{k} {v:.3f}" for k, v in t["per_class_f1"].items() if v is not None)
print(f"mask vs ground truth: macro F1 {t['macro_f1']:.4f}, micro F1 {t['micro_f1']:.4f} ({per_class})")
PY
echo "mask:    $OUT/mask.tif (open in QuPath or with openslide)"
echo "overlay: $OUT/overlay.png"
echo "summary: $OUT/summary.json"
