"""Step 7, evaluation: weights, runs and reports in; reports that score and compare them out.

- `evaluate` (`evaluate`): served weights on a dataset folder, cropped as the server crops.
- `evaluate_auto_roi` (`evaluate-auto-roi`): the served classifier (or a run's fold models) on the automatic ROI
  next to a drawn box's, per site: found, hit, paired AUC difference.
- `compare` (`compare`): regimes side by side from their CV runs, paired AUC differences.
- `site_ablation` (`site-ablation`): recipes side by side on one site's lesions, paired CIs over its patients.
- `kappa` (`kappa`): reader agreement (Cohen's kappa) and each reader's and the model's accuracy.
"""
