"""Step 2, ROIs: lesion records in; the ROI table, the classifier's crops and SAM's view of each lesion out.

- `prepare`: a dataset folder -> rois.csv + counts (`python -m training prepare`); `prepared` reads or caches it.
- `splits`: the lesions of a modality (`select`) and the group-aware stratified CV folds (`folds_of`) that the
  classifier, the SAM decoder fine-tuning, the per-fold SNGANs and the SAM probe all share.
- `crops`: gray crops around each record's lesion box (uint8 N x size x size), cached: what the SNGAN sees.
- `sources`: where a crop comes from: the expert, a jittered drawn box, or SAM's mask from that box, as served.
- `auto_views`: the `auto` source: the served localiser's box outlined by SAM, as the server answers `{}`
  (or "no lesion found": no crop), and whether it hit the expert's lesion.
- `sam_embeddings`: SAM image embeddings of every record, computed once and memory-mapped.
"""
