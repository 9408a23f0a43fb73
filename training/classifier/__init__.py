"""Step 5, classifier: ROIs (from `rois`, optionally SNGAN ROIs from `gan` and masks from `segmentation`) in;
cross-validated ResNet18 runs (oof.csv, reports, temperature, threshold) and their weights out.

- `train_classifier` (`train-classifier`): CV, final fit, held-out site; the run's TrainConfig.
- `augment`: affine and scanner augmentation of training batches.
- `ensemble` (`ensemble`): the mean of several runs (seeds), reported as one.
- `marks`, `scanner_shifts`: burned-in measurement marks and whole-image scanner changes, the views a
  prediction must survive (the SAM probe fits on them; bench/ measures them).
- `outline_aux`: training-only outline heads (`--aux-outline`, `--aux-irregularity`). A study: measured, not
  served.
- `fold_fid` (`fold-fid`): FID/KID of one sngan run's per-fold SNGAN. A study.
"""
