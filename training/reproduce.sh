#!/usr/bin/env bash
# The full offline phase, as run for training/RESULTS.md: the served weights first (served.sh: prepare,
# train, export, evaluate), then every regime and lever that RESULTS.md compares them with.
# `make weights` runs it. served.sh took 70 min on the 2-core CPU; each SNGAN regime adds a GAN
# per fold (see RESULTS.md for measured times).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${BRANET_DATA:-../shared/data}
RUNS=${RUNS:-runs}
REGIMES=${REGIMES:-real sngan hybrid}
export PYTHONUNBUFFERED=1

PY=$PY RUNS=$RUNS training/served.sh  # prepare, the served US and DM models, export, evaluate
for m in us dm; do
  # SNGAN per fold: US 30 passes over ~520 ROIs (~500 generator updates), DM 30 x 10 = 300 updates
  gan=(--gan-epochs 30); [ "$m" = dm ] && gan+=(--gan-iters-per-epoch 10)
  for r in $REGIMES; do
    [ "$m-$r" = dm-real ] && continue  # served.sh trained it
    extra=()
    [ "$r" = real ] && [ "$m" = us ] && $PY -m training train-classifier --rois "$RUNS/rois" --modality us \
      --regime real --seed 1 --out "$RUNS/us-real-seed1"
    # hybrid: the same per-fold SNGANs as sngan, as many synthetic ROIs as real ones
    [ "$r" = hybrid ] && extra=(--gan-dir "$RUNS/$m-sngan" --synthetic-per-class "$([ "$m" = us ] && echo 260 || echo 50)")
    [ "$r" = real ] || extra+=(--no-final)  # measured, not served (RESULTS.md)
    $PY -m training train-classifier --rois "$RUNS/rois" --modality "$m" --regime "$r" \
      "${gan[@]}" --out "$RUNS/$m-$r" "${extra[@]}"
  done
  runs=("$RUNS/$m-real")
  if [ "$m" = us ]; then
    # The served US model: the mean of the two real runs (seeds 0 and 1), reported as one.
    $PY -m training ensemble "$RUNS/us-real" "$RUNS/us-real-seed1" --out "$RUNS/us-real-ens"
    runs+=("$RUNS/us-real-seed1" "$RUNS/us-real-ens")
  fi
  $PY -m training fold-fid "$RUNS/$m-sngan" --rois "$RUNS/rois" --fold 0 --threads 1 || true
  $PY -m training compare "${runs[@]}" $(for r in $REGIMES; do [ "$r" = real ] || echo "$RUNS/$m-$r"; done) \
    --out "training/results/$m"
done
# The ROI source the server uses (training/rois/sources.py): every fold model is also scored on expert,
# drawn-box and SAM crops of its test lesions (--served-as, default all three).
$PY -m training train-classifier --rois "$RUNS/rois" --modality us --roi-source expert --out "$RUNS/us-expert-skew" --no-final
$PY -m training train-classifier --rois "$RUNS/rois" --modality us --roi-source sam --out "$RUNS/us-sam" --no-final
$PY -m training compare "$RUNS/us-expert-skew" "$RUNS/us-sam" "$RUNS/us-sam-mask" --out training/results/us-roi-source
# DM, same protocol (RESULTS.md: none helps; the expert-trained DM model stays served)
$PY -m training train-classifier --rois "$RUNS/rois" --modality dm --roi-source expert --no-final --out "$RUNS/dm-expert-skew"
$PY -m training train-classifier --rois "$RUNS/rois" --modality dm --roi-source sam --no-final --out "$RUNS/dm-sam"
$PY -m training train-classifier --rois "$RUNS/rois" --modality dm --roi-source sam --mask-channel --no-final --out "$RUNS/dm-sam-mask"
# Levers on top of sam + mask (RESULTS.md, "Levers"): another seed, scanner augmentation, 224 px, and
# LiteMedSAM's decoder fine-tuned on the expert masks (cross-fitted on the same folds; not served).
SM=(--rois "$RUNS/rois" --modality us --roi-source sam --mask-channel --no-final)
$PY -m training train-classifier "${SM[@]}" --seed 1 --out "$RUNS/us-sam-mask-seed1"
$PY -m training ensemble "$RUNS/us-sam-mask" "$RUNS/us-sam-mask-seed1" --out "$RUNS/us-sam-mask-ens"
$PY -m training train-classifier "${SM[@]}" --augment scanner --out "$RUNS/us-sam-mask-scanner"
$PY -m training train-classifier "${SM[@]}" --size 224 --out "$RUNS/us-sam-mask-224"
$PY -m training finetune-sam --rois "$RUNS/rois" --modality us --out "$RUNS/sam-ft-us"
$PY -m training train-classifier "${SM[@]}" --sam litemedsam-us --sam-masks "$RUNS/sam-ft-us/oof_masks.npz" \
  --out "$RUNS/us-ft-mask"
$PY -m training compare "$RUNS/us-sam-mask" "$RUNS/us-sam-mask-seed1" "$RUNS/us-sam-mask-ens" "$RUNS/us-ft-mask" \
  "$RUNS/us-sam-mask-scanner" "$RUNS/us-sam-mask-224" --served-as sam --out training/results/us-levers
# The SAM probe (RESULTS.md, "The SAM probe"): LiteMedSAM's encoder around the lesion (inside the mask,
# over the crop, behind the lesion) fused with the ResNet18. First the probe on the image embedding alone
# (`--stages neck`, served before), fitted on clean images or on clean + marked (+ scanner-shifted) views,
# and with the two-seed mean; which regions (and the mask decoder's IoU token, and which encoder stages),
# over ten fold splits; the first served probe (mask + crop) and the IoU-token probe (not served: it reads
# how the box was drawn) for comparison. Then every stage of the encoder (the default), served.
$PY -m training probe-regions "$RUNS/us-sam-mask" "$RUNS/us-sam-mask-seed1" --rois "$RUNS/rois" \
  --out training/results/us-sam-probe/regions
NECK=(--stages neck)
$PY -m training sam-probe "$RUNS/us-sam-mask" --rois "$RUNS/rois" "${NECK[@]}" --marks --out "$RUNS/us-sam-mask-probe"
$PY -m training sam-probe "$RUNS/us-sam-mask" --rois "$RUNS/rois" "${NECK[@]}" --mark-augment --scanner \
  --out "$RUNS/us-sam-mask-probe-marks"
$PY -m training sam-probe "$RUNS/us-sam-mask" --rois "$RUNS/rois" "${NECK[@]}" --mark-augment --scanner-augment \
  --out "$RUNS/us-sam-mask-probe-marks-scanner"
for opt in "" --mark-augment; do
  $PY -m training sam-probe "$RUNS/us-sam-mask" "$RUNS/us-sam-mask-seed1" --rois "$RUNS/rois" "${NECK[@]}" $opt \
    --out "$RUNS/us-sam-mask-ens-probe${opt:+-marks}"
done
$PY -m training sam-probe "$RUNS/us-sam-mask" --rois "$RUNS/rois" "${NECK[@]}" --regions mask crop --marks \
  --out "$RUNS/us-sam-mask-probe-maskcrop"
$PY -m training sam-probe "$RUNS/us-sam-mask" --rois "$RUNS/rois" "${NECK[@]}" --regions mask crop --mark-augment \
  --out "$RUNS/us-sam-mask-probe-marks-maskcrop"
$PY -m training sam-probe "$RUNS/us-sam-mask" --rois "$RUNS/rois" "${NECK[@]}" --iou-token --marks --scanner \
  --out "$RUNS/us-sam-mask-probe-iou"
for run in us-sam-mask us-sam-mask-seed1; do
  $PY -m training sam-probe "$RUNS/$run" --rois "$RUNS/rois" "${NECK[@]}" --iou-token --mark-augment --scanner-augment \
    --out "$RUNS/$run-probe-iou-marks-scanner"
done
$PY -m training sam-probe "$RUNS/us-sam-mask" --rois "$RUNS/rois" --marks --scanner --out "$RUNS/us-sam-mask-probe-stages"
# served.sh fitted the served probe (us-sam-mask-probe-stages-marks-scanner); the same on seed 1's folds
$PY -m training sam-probe "$RUNS/us-sam-mask-seed1" --rois "$RUNS/rois" --mark-augment --scanner-augment \
  --out "$RUNS/us-sam-mask-seed1-probe-stages-marks-scanner"
# Training-only outline heads, a wider margin, longer training, more seeds (RESULTS.md "Levers on a lent
# GPU"; ran there with the same cross_validate, seeds 0-5). On this CPU each line is ~25 min of epochs,
# about 12 hours in all, so they run only with LEVERS=1 and after the served weights are exported.
[ "${LEVERS:-0}" = 1 ] || exit 0
for s in 0 1 2 3 4 5; do
  $PY -m training train-classifier "${SM[@]}" --seed $s --out "$RUNS/gpu-base-s$s"
  $PY -m training train-classifier "${SM[@]}" --seed $s --aux-outline 1 --aux-irregularity 0.5 --out "$RUNS/gpu-outline-irr-s$s"
  $PY -m training train-classifier "${SM[@]}" --seed $s --margin 0.25 --out "$RUNS/gpu-margin25-s$s"
  $PY -m training sam-probe "$RUNS/gpu-base-s$s" --rois "$RUNS/rois" --regions mask crop --stages neck \
    --out "$RUNS/gpu-base-s$s-probe"
done
for s in 0 1 2; do
  $PY -m training train-classifier "${SM[@]}" --seed $s --aux-outline 1 --out "$RUNS/gpu-outline-s$s"
  $PY -m training train-classifier "${SM[@]}" --seed $s --aux-irregularity 0.5 --out "$RUNS/gpu-irr-s$s"
  $PY -m training train-classifier "${SM[@]}" --seed $s --margin 0.25 --aux-outline 1 --out "$RUNS/gpu-margin25-outline-s$s"
done
$PY -m training train-classifier "${SM[@]}" --epochs 60 --out "$RUNS/gpu-epochs60-s0"
$PY -m training train-classifier "${SM[@]}" --aux-outline 3 --out "$RUNS/gpu-outline3-s0"
