"""`export`: copy chosen trained weights (fp16 safetensors) into models/weights/ and merge the manifest.

Each `--from` is a weights folder written by train-classifier (`OUT/weights`). Entries are verified
(sha256, architecture) before anything is copied; the served manifest is replaced atomically, so a
failed export leaves the served weights as they were.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from models.manifest import WEIGHTS_DIR, Manifest, WeightsError, load_classifier, read_manifest, write_manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="sources", type=Path, action="append", required=True,
                   help="weights folder from train-classifier (repeatable)")
    p.add_argument("--to", type=Path, default=WEIGHTS_DIR, help=f"served weights folder (default {WEIGHTS_DIR})")


def export(sources: list[Path], target: Path) -> Manifest:
    try:
        merged = read_manifest(target)
    except WeightsError:
        merged = Manifest()
    staged = []
    for src in sources:
        for name, entry in read_manifest(src).models.items():
            load_classifier(name, src)  # verifies sha256 and shape before anything is copied
            staged.append((src / entry.file, entry))
    target.mkdir(parents=True, exist_ok=True)
    for path, entry in staged:
        tmp = target / f".{entry.file}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(target / entry.file)
        merged.models[entry.name] = entry
    write_manifest(merged, target)
    for _, entry in staged:
        load_classifier(entry.name, target)
    return merged


def run(args: argparse.Namespace) -> int:
    try:
        manifest = export(args.sources, args.to)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, e in sorted(manifest.models.items()):
        print(f"{name}: {e.file} sha256 {e.sha256[:12]} regime {e.regime} threshold {e.threshold:.3f}")
    return 0
