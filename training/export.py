"""`export`: copy chosen trained weights (fp16 safetensors) into models/weights/ and merge the manifest.

Each `--from` is a weights folder written by train-classifier (`OUT/weights`); each `--sam-decoder` a
finetune-sam output folder (its final decoder becomes `sam_decoders[<base>-<modality>]`, loadable by
that name everywhere a SAM name is taken). Entries are verified (sha256, architecture) before anything
is copied; the served manifest is replaced atomically, so a failed export leaves the served weights as
they were.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from models.manifest import (WEIGHTS_DIR, Manifest, ModelEntry, SamDecoderEntry, WeightsError, load_classifier,
                             load_sam_probe, read_manifest, SamProbeSpec, sha256_file, write_manifest)
from models.sam import load_sam


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="sources", type=Path, action="append", default=[],
                   help="weights folder from train-classifier (repeatable)")
    p.add_argument("--sam-decoder", dest="decoders", type=Path, action="append", default=[],
                   help="finetune-sam output folder (decoder.safetensors + decoder.json; repeatable)")
    p.add_argument("--to", type=Path, default=WEIGHTS_DIR, help=f"served weights folder (default {WEIGHTS_DIR})")


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


def export(sources: list[Path], target: Path, decoders: list[Path] = ()) -> Manifest:
    try:
        merged = read_manifest(target)
    except WeightsError:
        merged = Manifest()
    staged = []
    for src in sources:
        for name, entry in read_manifest(src).models.items():
            load_classifier(name, src)  # verifies sha256 and shape before anything is copied
            load_sam_probe(entry, src)
            staged.append((src / entry.file, entry))
    decoder_entries = [(folder / "decoder.safetensors", decoder_entry(folder)) for folder in decoders]
    for path, entry in decoder_entries:
        if sha256_file(path) != entry.sha256:
            raise WeightsError(f"{path} does not match the sha256 in its decoder.json")
    target.mkdir(parents=True, exist_ok=True)
    probes = [(path.parent / entry.sam_probe.file, entry.sam_probe) for path, entry in staged if entry.sam_probe]
    for path, entry in [*staged, *decoder_entries, *probes]:
        tmp = target / f".{entry.file}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(target / entry.file)
        if isinstance(entry, SamProbeSpec):
            continue
        (merged.models if isinstance(entry, ModelEntry) else merged.sam_decoders)[entry.name] = entry
    write_manifest(merged, target)
    for _, entry in staged:
        load_classifier(entry.name, target)
        load_sam_probe(entry, target)
    for _, entry in decoder_entries:
        load_sam(entry.name, weights_dir=target)
    return merged


def run(args: argparse.Namespace) -> int:
    try:
        if not args.sources and not args.decoders:
            raise WeightsError("nothing to export: give --from and/or --sam-decoder")
        manifest = export(args.sources, args.to, args.decoders)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, e in sorted(manifest.models.items()):
        print(f"{name}: {e.file} sha256 {e.sha256[:12]} regime {e.regime} threshold {e.threshold:.3f}")
    for name, d in sorted(manifest.sam_decoders.items()):
        print(f"{name}: {d.file} sha256 {d.sha256[:12]} ({d.base} with a fine-tuned mask decoder)")
    return 0
