"""Step 4, segmentation: lesions with expert masks in; SAM's outline quality and a fine-tuned decoder out.

- `evaluate_segmentation` (`evaluate-segmentation`): a SAM model zero-shot on BUSI's masks, Dice/IoU per
  prompt (box, point, auto); it chose the server's SAM routes.
- `sam_finetune` (`finetune-sam`): LiteMedSAM's mask decoder fine-tuned on the expert masks, cross-fitted on
  the classifier's folds; its out-of-fold masks feed `train-classifier --sam-masks`. A study: measured, not
  served.
- `outline`: a lesion outline's shape (solidity), shared with the classifier's outline heads.
"""
