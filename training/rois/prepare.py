"""`prepare`: any folder of known datasets -> one ROI table (rois.csv) + counts (summary.json/.md)."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from training.common.cache import cache_root
from training.datasets import adapters, discover, known_layouts
from training.datasets.roi_table import (RoiRecord, Summary, read_table, summarize, summary_markdown, write_summary,
                                        write_table)


class LayoutError(ValueError):
    """The folder holds no dataset in a known layout."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BRANET_DATA", "../shared/data")),
                   help="folder holding one or more datasets (default: $BRANET_DATA or ../shared/data)")
    p.add_argument("--out", type=Path, required=True, help="output folder for rois.csv and summary")
    p.add_argument("--sources", nargs="+", default=None, metavar="NAME",
                   help=f"read only these layouts (default: every one found; known: {known_layouts()})")


def prepare(data: Path, out: Path, log=print, sources: list[str] | None = None) -> tuple[list[RoiRecord], Summary]:
    data = Path(data)
    if not data.is_dir():
        raise LayoutError(f"data folder not found: {data}")
    found = discover(data)
    if sources is not None:
        unknown = sorted(set(sources) - {a.NAME for a in adapters()})
        if unknown:
            raise LayoutError(f"unknown source {', '.join(unknown)} (known: {known_layouts()})")
        kept = [(a, r) for a, r in found if a.NAME in sources]
        if found and not kept:
            raise LayoutError(f"no {', '.join(sources)} dataset under {data} "
                              f"(it holds: {', '.join(sorted({a.NAME for a, _ in found}))})")
        found = kept
    if not found:
        raise LayoutError(f"no dataset in a known layout under {data} (known: {known_layouts()})")
    records: list[RoiRecord] = []
    warnings: list[str] = []
    for adapter, root in found:
        log(f"reading {adapter.NAME} from {root}")
        records += adapter.read(root, warnings.append)
    for w in warnings:
        log(f"warning: {w}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(records, out / "rois.csv")
    summary = summarize(records, warnings)
    write_summary(summary, out)
    return records, summary


def prepared(data: Path, log=print) -> list[RoiRecord]:
    """The ROI table of `data`: a folder with rois.csv, or a dataset folder prepared on the fly (cached)."""
    data = Path(data)
    if (data / "rois.csv").is_file():
        return read_table(data / "rois.csv")
    # The adapters' code is part of the key: a new or changed adapter (e.g. BUS-BRA) must not be
    # answered with a table prepared before it existed.
    key = hashlib.sha256(str(data.resolve()).encode() + _adapters_digest()).hexdigest()[:16]
    out = cache_root() / "prepared" / key
    if (out / "rois.csv").is_file() and (out / "rois.csv").stat().st_mtime >= _newest_mtime(data):
        return read_table(out / "rois.csv")
    prepare(data, out, log)
    return read_table(out / "rois.csv")  # the same record values (float boxes) as every later cached read


def _adapters_digest() -> bytes:
    from training import datasets  # the adapters and the table they fill (datasets/roi_table.py)
    files = sorted(Path(datasets.__file__).parent.glob("*.py"))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).digest()


def _newest_mtime(data: Path) -> float:
    return max((p.stat().st_mtime for p in [data, *data.rglob("*")] if p.is_dir()), default=0.0)


def run(args: argparse.Namespace) -> int:
    try:
        _, summary = prepare(args.data, args.out, sources=args.sources)
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_markdown(summary))
    print(f"wrote {args.out / 'rois.csv'}")
    return 0
