"""Automatic lesion finding (issue 24): upload -> outline with `{}` on a real server, against the bare models.

    .venv/bin/python bench/auto.py [--data ../shared/data] [--lesions 14] [--normals 6] [--out bench/results/auto.json]

1. Bare: in this process, for each image, the box route's LiteMedSAM image encoder (the server's runtime and
   kept stages) + the committed localiser (models/localiser.py) + LiteMedSAM's mask decoder on its best box
   (`Localiser.outline`, when it finds one): the least any server could do for an automatic outline. Median = `bare`.
2. Starts `branet serve` (fresh BRANET_HOME) and, at concurrency 1, for each image as the app does it:
   POST /v1/images (decodes, stores, encodes) then POST /v1/images/{id}/segment with `{}` (the localiser on the
   cached embedding + the decoder): upload -> outline seconds, p50 / p95 (target <= 3 s on this CPU); then
   POST /v1/analyses {image_id, prompt: {}} (the outline again + the classifier + Grad-CAM) for the rest of an
   analysis. Lesion images: Dice of the served outline with the expert mask (a miss scores 0); normal images:
   how many answer no_lesion_found. Every image is new to the server (nothing cached across images).
Bare and served run one after the other, never at once, so they do not share the cores.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.manifest import load_classifier, load_localiser, read_manifest  # noqa: E402
from models.probe_head import encoder_only  # noqa: E402
from models.sam import load_sam  # noqa: E402
from models.segmentation import Prompt, SamSegmenter  # noqa: E402
from server import launcher  # noqa: E402
from server.settings import Settings  # noqa: E402

WEIGHTS = Settings().weights  # what the server serves: the committed models/weights (BRANET_WEIGHTS)


def number(path: Path) -> int:
    return int(path.stem.split("(")[1].split(")")[0])


def busi_images(data: Path, lesions: int, normals: int) -> list[tuple[Path, np.ndarray | None]]:
    """Benign and malignant images interleaved (with their expert masks, several lesions merged), then normals."""
    folder = data / "busi" / "Dataset_BUSI_with_GT"

    def of(label: str) -> list[tuple[Path, np.ndarray | None]]:
        out = []
        for path in sorted((folder / label).glob(f"{label} (*).png"), key=number):
            masks = sorted(folder.glob(f"{label}/{path.stem}_mask*.png"))
            merged = np.any([np.asarray(Image.open(m).convert("L")) > 0 for m in masks], axis=0) if masks else None
            out.append((path, merged if label != "normal" else None))  # a normal image's mask file is empty
        return out
    benign, malignant = of("benign"), of("malignant")
    mixed = [c for pair in zip(benign, malignant) for c in pair if c[1] is not None and c[1].any()]
    return mixed[:lesions] + of("normal")[:normals]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def bare_times(cases) -> list[float]:
    """Per image but the first (warm-up): encoder + localiser + decoder, in s, as the server runs them."""
    manifest = read_manifest(WEIGHTS)
    entry = manifest.localisers["localiser-us"]
    localiser = load_localiser(entry, WEIGHTS)
    _, classifier = load_classifier("classifier-us", WEIGHTS)
    spec = classifier.sam_probe
    stages = encoder_only(spec.stages) if spec and spec.sam == entry.sam else ()
    segmenter = SamSegmenter(load_sam(entry.sam), stages=stages)  # the server's default runtime
    times = []
    for i, (path, _) in enumerate(cases):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        start = time.perf_counter()
        with torch.inference_mode():
            embedding = segmenter.encode(rgb)
            found = localiser.locate(embedding.features, embedding.input_size, embedding.original_size)
            if found.found:  # as the server outlines it (server/engine.py, Engine.outline)
                localiser.outline(found.found[0],
                                  lambda box: segmenter.predict(embedding, Prompt(box=[float(v) for v in box])).mask)
        if i:
            times.append(time.perf_counter() - start)
    print(f"  bare: {segmenter.runtime}/{segmenter.precision} encoder, stages {stages}", flush=True)
    return times


def served(port: int, token: str, cases) -> list[dict]:
    rows = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                      timeout=600) as client:
        for i, (path, truth) in enumerate(cases):
            data = path.read_bytes()
            start = time.perf_counter()
            image = client.post("/v1/images", files={"file": (path.name, data)}, data={"modality": "us"})
            assert image.status_code == 201, image.text
            uploaded = time.perf_counter()
            seg = client.post(f"/v1/images/{image.json()['image_id']}/segment", json={"prompt": {}})
            outlined = time.perf_counter()
            assert seg.status_code in (200, 422), seg.text
            analysis = client.post("/v1/analyses", json={"image_id": image.json()["image_id"], "prompt": {}})
            analysed = time.perf_counter()
            assert (analysis.status_code == 201) == (seg.status_code == 200), analysis.text[:300]
            body = seg.json()
            row = {"image": path.name, "lesion": truth is not None, "status": seg.status_code,
                   "upload_s": uploaded - start, "segment_s": outlined - uploaded, "outline_s": outlined - start,
                   "analysis_s": analysed - outlined}
            if seg.status_code == 200:
                mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"])))) > 0
                row |= {"found": True, "score": body["lesion_score"], "candidates": len(body["candidates"]),
                        "stages_ms": body["timings_ms"], "dice": dice(mask, truth) if truth is not None else None}
            else:
                error = body["error"]
                assert error["code"] == "no_lesion_found", error
                row |= {"found": False, "score": error.get("score"), "dice": 0.0 if truth is not None else None}
            rows.append(row)
            print(f"  {i + 1}/{len(cases)} {path.name}: {row['status']} outline {row['outline_s']:.2f} s "
                  f"(upload {row['upload_s']:.2f} + {{}} {row['segment_s']:.2f}), analysis {row['analysis_s']:.2f} s, "
                  f"score {row['score']}, dice {row['dice']}", flush=True)
    return rows


def summary(rows: list[dict], bare: list[float]) -> dict:
    measured = rows[1:]  # the first request warms the server up
    outline = [r["outline_s"] for r in measured]
    lesions = [r for r in rows if r["lesion"]]
    normals = [r for r in rows if not r["lesion"]]
    bare_p50 = statistics.median(bare)
    return {
        "n": len(measured), "bare_p50_s": bare_p50, "bare_p95_s": float(np.percentile(bare, 95)),
        "outline_p50_s": statistics.median(outline), "outline_p95_s": float(np.percentile(outline, 95)),
        "outline_p50_over_bare": statistics.median(outline) / bare_p50,
        "upload_p50_s": statistics.median(r["upload_s"] for r in measured),
        "segment_p50_s": statistics.median(r["segment_s"] for r in measured),
        "analysis_after_outline_p50_s": statistics.median(r["analysis_s"] for r in measured),
        "locate_p50_ms": statistics.median([r["stages_ms"]["locate"] for r in measured if r.get("stages_ms")] or [0]),
        "lesions": len(lesions), "lesions_found": sum(r["found"] for r in lesions),
        "lesion_dice_mean": float(np.mean([r["dice"] for r in lesions])) if lesions else None,
        "normals": len(normals), "normals_no_lesion_found": sum(not r["found"] for r in normals),
        "target_outline_p95_s": 3.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BRANET_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--lesions", type=int, default=14)
    parser.add_argument("--normals", type=int, default=6)
    parser.add_argument("--bare", type=int, default=9, help="images for the bare time (the first a warm-up)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args()
    cases = busi_images(args.data, args.lesions + args.bare, args.normals)
    bare_cases, cases = cases[:args.bare], cases[args.bare:]
    print(f"bare (encoder + localiser + decoder), {len(bare_cases) - 1} images ...", flush=True)
    bare = bare_times(bare_cases)
    print(f"  bare p50 {statistics.median(bare):.3f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="branet-bench-auto-") as tmp:
        home = Path(tmp)
        token = launcher.branet(home, "users", "add", "bench", "--no-password").strip()
        with (home / "server.log").open("w") as log:
            port = launcher.free_port()
            proc = launcher.start(port, launcher.server_env(home), log)
            try:
                print(f"served (branet serve, concurrency 1), {len(cases)} images ...", flush=True)
                rows = served(port, token, cases)
            finally:
                launcher.stop(proc)
    out = {"summary": summary(rows, bare), "bare_s": bare, "rows": rows, "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
           "localiser": read_manifest(WEIGHTS).localisers["localiser-us"].sha256[:12], "weights": str(WEIGHTS)}
    print(json.dumps(out["summary"], indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
