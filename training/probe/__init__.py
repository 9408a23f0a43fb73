"""Step 6, SAM probe: classifier runs on SAM's crops and SAM's image embeddings in; the fused US model out
(ResNet18 + a logistic probe on LiteMedSAM's encoder, cross-fitted report and weights).

- `sam_probe` (`sam-probe`): the probe, fused with one or several runs; the served US model comes from here.
- `views`: the probe's features of every lesion under a view (marks burned in, a scanner shift), from a
  fresh encoder pass in worker processes.
- `regions` (`probe-regions`): which regions, encoder stages and the IoU token to read, over many fold
  splits. A study: measured, not served.
- `sites` (`probe-sites`): the probe alone across sites. A study: measured, not served.
"""
