#!/usr/bin/env bash
# The full offline phase, as run for training/RESULTS.md: prepare, cross-validate every regime,
# compare, fit and export the served weights, evaluate them. `make weights` runs it.
# On the 2-core CPU the served regime (real) takes about 50 min for US and 12 min for DM;
# the SNGAN regimes add a GAN per fold (see RESULTS.md for measured times).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${BRANET_DATA:-../shared/data}
RUNS=${RUNS:-runs}
REGIMES=${REGIMES:-real sngan hybrid}
export PYTHONUNBUFFERED=1

$PY -m training prepare --data "$DATA" --out "$RUNS/rois"
for m in us dm; do
  gan_epochs=$([ "$m" = us ] && echo 60 || echo 200)  # about 1000 / 600 generator updates
  for r in $REGIMES; do
    extra=()
    [ "$r" = hybrid ] && extra=(--gan-dir "$RUNS/$m-sngan")  # the same per-fold SNGANs as sngan
    $PY -m training train-classifier --rois "$RUNS/rois" --modality "$m" --regime "$r" \
      --gan-epochs "$gan_epochs" --out "$RUNS/$m-$r" "${extra[@]}"
  done
  $PY -m training compare $(for r in $REGIMES; do echo "$RUNS/$m-$r"; done) --out "training/results/$m"
done
SERVED_US=${SERVED_US:-real}
SERVED_DM=${SERVED_DM:-real}
$PY -m training export --from "$RUNS/us-$SERVED_US/weights" --from "$RUNS/dm-$SERVED_DM/weights"
$PY -m training evaluate --weights models/weights --data "$DATA/busi" --out "$RUNS/eval-us"
$PY -m training evaluate --weights models/weights --data "$DATA/mias" --out "$RUNS/eval-dm"
