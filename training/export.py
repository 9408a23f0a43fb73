"""`export`: copy chosen trained weights (fp16 safetensors) into models/weights/ and merge the manifest.

Each `--from` is a weights folder written by train-classifier (`OUT/weights`); each `--sam-decoder` a
finetune-sam output folder (its final decoder becomes `sam_decoders[<base>-<modality>]`, loadable by
that name everywhere a SAM name is taken); each `--localiser` a train-localiser output folder (its served
lesion finder becomes `localisers[localiser-<modality>]`). Entries are verified (sha256, architecture) before anything
is copied; the served manifest is replaced atomically, so a failed export leaves the served weights as
they were. Each `--out-of-site` is a held-out-site report (`train-classifier --holdout-site` or `sam-probe`
on such a run: OUT/holdout/report.json) of the exported recipe, trained on one site and tested on another,
or an `evaluate` report of the exported weights themselves on a site they were not trained on; its figures
go into the entry of its modality (`metrics.out_of_site`), so `GET /v1/models` shows them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from models.manifest import (WEIGHTS_DIR, LocaliserEntry, Manifest, ModelEntry, SamDecoderEntry, SamProbeSpec,
                             WeightsError, load_classifier, load_localiser, load_sam_probe, read_manifest,
                             sha256_file, write_manifest)
from models.sam import load_sam


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="sources", type=Path, action="append", default=[],
                   help="weights folder from train-classifier (repeatable)")
    p.add_argument("--sam-decoder", dest="decoders", type=Path, action="append", default=[],
                   help="finetune-sam output folder (decoder.safetensors + decoder.json; repeatable)")
    p.add_argument("--localiser", dest="localisers", type=Path, action="append", default=[],
                   help="train-localiser output folder (entry.json + localiser-<modality>.safetensors; repeatable)")
    p.add_argument("--to", type=Path, default=WEIGHTS_DIR, help=f"served weights folder (default {WEIGHTS_DIR})")
    p.add_argument("--out-of-site", type=Path, action="append", default=[], metavar="REPORT",
                   help="a holdout/report.json of the exported recipe (repeatable: one per held-out site)")


OUT_OF_SITE_KEYS = ("n", "n_malignant", "roc_auc", "roc_auc_ci", "sensitivity", "specificity", "ece", "threshold")


def out_of_site(reports: list[Path]) -> dict[str, list[dict]]:
    """Held-out-site figures by modality, from holdout report.json files; WeightsError names a bad one."""
    found: dict[str, list[dict]] = {}
    for path in reports:
        try:
            rep = json.loads(Path(path).read_text())
            if rep.get("calibrated") is False:
                raise WeightsError(f"{path} is uncalibrated (train-classifier --holdout-site --no-cv: temperature 1, "
                                   "threshold 0.5, for comparing recipes): its operating point was never fitted "
                                   "on the training site, so it is no out-of-site row to serve")
            if "model_sha256" in rep and "site" not in rep:  # evaluate: these very weights on one other site
                (site,) = rep["data"]["sources"]
                row = {"tested_on": site, "model_sha256": rep["model_sha256"], "protocol": "evaluate",
                       **({"trained_on": rep["trained_on"], "regime": rep["regime"]} if rep.get("trained_on") else {})}
            else:
                row = {"trained_on": rep["trained_on"], "tested_on": rep["site"], "regime": rep["regime"],
                       "protocol": "holdout"}
            row |= {k: rep[k] for k in OUT_OF_SITE_KEYS}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{path} is not a held-out-site report (train-classifier --holdout-site) nor an "
                               f"evaluate report on one site: {e}") from e
        found.setdefault(rep["modality"], []).append(row)
    return found


def attach_out_of_site(entry: ModelEntry, rows: list[dict]) -> ModelEntry:
    """The entry with these out-of-site rows in its metrics. An evaluate row is of this very model on a site
    it was not trained on, or of the recipe's model trained on other sites (the report says which: the
    estimate for a new hospital once the exported model has seen every site there is)."""
    trained_on = sorted(entry.data.get("sources", {}))
    checked = []
    for row in rows:
        if row["protocol"] == "evaluate":
            mine = row["model_sha256"] == entry.sha256
            if not mine and not row.get("trained_on"):
                raise WeightsError(f"an --out-of-site evaluate report is of model {row['model_sha256'][:12]}, "
                                   f"not of the exported {entry.name} {entry.sha256[:12]}, and does not say what "
                                   "that model was trained on")
            seen = trained_on if mine else row["trained_on"]
            if row["tested_on"] in seen:
                raise WeightsError(f"{entry.name if mine else row['model_sha256'][:12]} was trained on "
                                   f"{row['tested_on']}: that is not out of site")
            row = {"trained_on": seen, **{k: v for k, v in row.items() if not (mine and k == "model_sha256")}}
        checked.append(row)
    return entry.model_copy(update={"metrics": {**entry.metrics, "out_of_site": checked}})


def decoder_entry(folder: Path) -> SamDecoderEntry:
    meta_path, path = folder / "decoder.json", folder / "decoder.safetensors"
    if not (meta_path.is_file() and path.is_file()):
        raise WeightsError(f"{folder} holds no final decoder (decoder.json + decoder.safetensors): run finetune-sam without --no-final")
    meta = json.loads(meta_path.read_text())
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").is_file() else {}
    metrics = {r["masks"]: {k: r[k] for k in ("dice_mean", "solidity_auc", "solidity_corr_expert")}
               for r in report.get("rows", [])}
    return SamDecoderEntry(name=f"{meta['base']}-{meta['modality']}", base=meta["base"], file=f"sam-{meta['base']}-{meta['modality']}-decoder.safetensors",
                           sha256=meta["sha256"], modality=meta["modality"], training=meta, metrics=metrics,
                           git_commit=meta.get("git_commit", "unknown"), created=meta.get("created", ""))


def localiser_entry(folder: Path) -> LocaliserEntry:
    try:
        entry = LocaliserEntry.model_validate_json((folder / "entry.json").read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{folder} holds no served localiser (entry.json from train-localiser): {e}") from e
    load_localiser(entry, folder)  # verifies sha256 and shape before anything is copied
    return entry


def export(sources: list[Path], target: Path, decoders: list[Path] = (), out_of_site_reports: list[Path] = (),
           localisers: list[Path] = ()) -> Manifest:
    try:
        merged = read_manifest(target)
    except WeightsError:
        merged = Manifest()
    staged = []
    held_out = out_of_site(list(out_of_site_reports))
    for src in sources:
        for name, entry in read_manifest(src).models.items():
            load_classifier(name, src)  # verifies sha256 and shape before anything is copied
            load_sam_probe(entry, src)
            if entry.modality in held_out:
                entry = attach_out_of_site(entry, held_out.pop(entry.modality))
            staged.append((src / entry.file, entry))
    if held_out:
        raise WeightsError(f"--out-of-site reports for {', '.join(held_out)}, but no exported model of that modality")
    decoder_entries = [(folder / "decoder.safetensors", decoder_entry(folder)) for folder in decoders]
    for path, entry in decoder_entries:
        if sha256_file(path) != entry.sha256:
            raise WeightsError(f"{path} does not match the sha256 in its decoder.json")
    localiser_entries = [(folder / entry.file, entry) for folder in localisers
                         for entry in [localiser_entry(folder)]]
    target.mkdir(parents=True, exist_ok=True)
    probes = [(path.parent / entry.sam_probe.file, entry.sam_probe) for path, entry in staged if entry.sam_probe]
    for path, entry in [*staged, *decoder_entries, *probes, *localiser_entries]:
        tmp = target / f".{entry.file}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(target / entry.file)
        if isinstance(entry, LocaliserEntry):
            merged.localisers[entry.name] = entry
        elif not isinstance(entry, SamProbeSpec):
            (merged.models if isinstance(entry, ModelEntry) else merged.sam_decoders)[entry.name] = entry
    write_manifest(merged, target)
    for _, entry in staged:
        load_classifier(entry.name, target)
        load_sam_probe(entry, target)
    for _, entry in decoder_entries:
        load_sam(entry.name, weights_dir=target)
    for _, entry in localiser_entries:
        load_localiser(entry, target)
    return merged


def run(args: argparse.Namespace) -> int:
    try:
        if not args.sources and not args.decoders and not args.localisers:
            raise WeightsError("nothing to export: give --from, --sam-decoder and/or --localiser")
        manifest = export(args.sources, args.to, args.decoders, args.out_of_site, args.localisers)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, e in sorted(manifest.models.items()):
        print(f"{name}: {e.file} sha256 {e.sha256[:12]} regime {e.regime} threshold {e.threshold:.3f}")
    for name, d in sorted(manifest.sam_decoders.items()):
        print(f"{name}: {d.file} sha256 {d.sha256[:12]} ({d.base} with a fine-tuned mask decoder)")
    for name, loc in sorted(manifest.localisers.items()):
        print(f"{name}: {loc.file} sha256 {loc.sha256[:12]} on {loc.sam}'s embedding, threshold {loc.threshold:.3f}")
    return 0
