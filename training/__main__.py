"""`python -m training <command>`: the offline phase, one command per step."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help), step by step in the order the offline phase runs them (training/__init__.py).
# A command's module is imported only when it runs.
COMMANDS = {
    # rois: datasets -> the ROI table
    "prepare": ("training.rois.prepare", "read datasets into one ROI table with counts per source/label"),
    # gan: ROIs -> SNGAN generator, synthetic ROIs, FID/KID
    "train-gan": ("training.gan.train_gan", "train the class-conditional SNGAN on one modality's ROIs, report FID/KID"),
    "synthesize": ("training.gan.synthesize", "synthetic ROIs from a trained SNGAN generator into an .npz"),
    "fid": ("training.gan.fid_command", "FID/KID of a synthetic .npz against real ROIs"),
    # segmentation: lesions + expert masks -> zero-shot SAM figures, a fine-tuned SAM decoder and its masks
    "evaluate-segmentation": ("training.segmentation.evaluate_segmentation",
                              "zero-shot Dice/IoU of a SAM model (box/point/auto prompt) on BUSI lesion masks"),
    "train-localiser": ("training.segmentation.localiser",
                        "the automatic lesion finder on LiteMedSAM's embedding: CV, held-out site, served weights"),
    "finetune-sam": ("training.segmentation.sam_finetune",
                     "LiteMedSAM's mask decoder fine-tuned on expert masks, cross-fitted; outline fidelity report"),
    # classifier: ROIs -> cross-validated ResNet18 runs and their weights
    "train-classifier": ("training.classifier.train_classifier",
                         "cross-validate and fit the ResNet18 (regimes real/sngan/hybrid)"),
    "ensemble": ("training.classifier.ensemble",
                 "mean of several runs (seeds): out-of-fold report and one weights file"),
    "fold-fid": ("training.classifier.fold_fid",
                 "FID/KID of one cross-validation fold's SNGAN against its training ROIs"),
    # probe: classifier runs + SAM's embeddings -> the fused US model (and its studies)
    "sam-probe": ("training.probe.sam_probe", "SAM's embedding of the lesion as a probe fused with runs on SAM crops: "
                  "cross-fitted report and weights"),
    "probe-regions": ("training.probe.regions", "study: the SAM probe by region of SAM's embedding over many fold "
                      "splits, alone and fused"),
    "probe-sites": ("training.probe.sites", "study: the SAM probe alone across sites, CV per site and each site "
                    "held out"),
    # evaluation: runs and weights -> reports that compare them
    "evaluate": ("training.evaluation.evaluate", "evaluate weights on a prepared or raw dataset folder"),
    "evaluate-auto-roi": ("training.evaluation.evaluate_auto_roi",
                          "served classifier on the automatic ROI (the server's {}) next to a drawn box's, per site"),
    "compare": ("training.evaluation.compare", "regimes side by side: AUC with CIs and paired AUC differences, plot"),
    "site-ablation": ("training.evaluation.site_ablation", "recipes side by side on one site's lesions (held out or "
                      "out of fold), paired bootstrap CIs over its patients"),
    "kappa": ("training.evaluation.kappa",
              "reader agreement: Cohen's kappa between two readers and each reader's accuracy"),
    # export: chosen weights -> models/weights, what the server loads
    "export": ("training.export", "write chosen weights (fp16 safetensors) + manifest into models/weights"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_)
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
