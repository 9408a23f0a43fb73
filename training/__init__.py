"""BraNet's offline phase: `python -m training <command> --help`.

One subpackage per step, in the order they run (each `__init__` says what goes in and what comes out):

1. `datasets/`     raw dataset folders -> lesion records (`datasets.roi_table.RoiRecord`)
2. `rois/`         records -> the ROI table (`prepare`), crops from the expert, a drawn box, SAM or the
                   served localiser (`auto`), SAM embeddings, and the lesion selection and CV folds every later step shares
3. `gan/`          ROIs -> a class-conditional SNGAN, synthetic ROIs, FID/KID
4. `segmentation/` lesions + expert masks -> zero-shot SAM figures, a fine-tuned SAM decoder and its masks
5. `classifier/`   ROIs (+ synthetic ROIs, + fine-tuned masks) -> cross-validated ResNet18 runs and weights
6. `probe/`        classifier runs + SAM embeddings -> the fused US model (ResNet18 + SAM probe)
7. `evaluation/`   runs and weights -> reports: evaluate, compare, site ablation, reader agreement
8. `export.py`     chosen weights -> models/weights, what the server loads

`common/` holds what every step uses (metrics, plots, device, provenance, cache). A step imports models/,
common/ and the steps before it, never a later one. `served.sh` runs the steps that make the served weights;
`reproduce.sh` everything RESULTS.md reports.
"""
