"""Serving overhead: the running server against the bare models, on real BUSI images, in one run.

    .venv/bin/python bench/serve.py [--data ../shared/data] [--levels 1 4 8] [--per-level 8]
                                    [--runtimes torch openvino onnxruntime] [--serve-runtimes openvino]

1. Bare: in this process, for each image, LiteMedSAM encoder + decoder (box from the expert mask)
   + the US classifier with its SAM probe and its Grad-CAM map (issue 28's bare analysis): the least any
   server could do. Median = `bare`.
2. Starts `branet serve` (fresh BRANET_HOME), then at each concurrency level sends POST /v1/analyses
   (multipart, box prompt; every request a new image so nothing is cached) and reports p50 / p95
   latency and throughput. Targets: p50 at concurrency 1 <= 1.15 x bare; throughput at 8 >= 0.9 / bare.
3. Re-prompt: one uploaded image, then POST /v1/images/{id}/segment with boxes (cached embedding), timed
   at the client and by the server (its Server-Timing total).
4. Overload: queue_size + 8 requests at once: the excess is answered 503 with Retry-After.
Bare and served run one after the other, never at once, so they do not share the cores.
Each image encoder runtime (models/encoder_runtime.py, issue 28) side by side in the same run: the bare
time of every runtime in `--runtimes` (each image through each runtime in turn, so they see the same
load; ratios to torch), and steps 2-4 against a server started with each of `--serve-runtimes`.
`--store firestore` (issue 22) runs instead the history store's share of an analysis at concurrency 1,
Firestore + Firebase sign-in on the real emulators against SQLite + local sign-in, the same images through
both servers in the same run (bench/store_share.py): `--store-images` analyses each, the first a warm-up.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
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

from models.gradcam import logits_and_cam  # noqa: E402
from models.manifest import load_classifier, load_sam_probe  # noqa: E402
from models.preprocessing import box_of_mask, classifier_input, normalize, to_gray  # noqa: E402
from models.sam import load_sam  # noqa: E402
from models.probe_head import encoder_only, fuse  # noqa: E402
from models.sam_probe import probe_input  # noqa: E402
from models.segmentation import Prompt, SamSegmenter  # noqa: E402
from server import launcher  # noqa: E402


def busi_cases(data: Path, n: int) -> list[tuple[Path, list[int]]]:
    folder = data / "busi" / "Dataset_BUSI_with_GT"
    cases = []
    for label in ("benign", "malignant"):
        for mask_path in sorted((folder / label).glob("* (*)_mask.png"), key=lambda p: int(p.stem.split("(")[1].split(")")[0])):
            mask = np.asarray(Image.open(mask_path).convert("L")) > 0
            if mask.any():
                cases.append((mask_path.with_name(mask_path.name.replace("_mask", "")), list(box_of_mask(mask))))
    # Interleave classes, deterministic.
    benign = [c for c in cases if "benign" in c[0].name]
    malignant = [c for c in cases if "malignant" in c[0].name]
    mixed = [c for pair in zip(benign, malignant) for c in pair]
    return mixed[:n]


def bare_times(cases, runtimes: list[str]) -> dict[str, dict[str, list[float]]]:
    """Per runtime: the bare analysis time and its encoder's share, in s, of each image but the first."""
    model, entry = load_classifier("classifier-us")
    probe = load_sam_probe(entry)  # its features come from the same LiteMedSAM encoder pass
    sam = load_sam(entry.sam_probe.sam if probe else "litemedsam")
    stages = encoder_only(entry.sam_probe.stages) if probe else ()
    segmenters = {r: SamSegmenter(sam, stages=stages, runtime=r) for r in runtimes}
    times = {r: {"total": [], "encode": []} for r in runtimes}
    for i, (path, box) in enumerate(cases):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        for k in range(len(runtimes)):  # each image through every runtime, in a rotating order
            runtime = runtimes[(i + k) % len(runtimes)]
            segmenter = segmenters[runtime]
            start = time.perf_counter()
            with torch.inference_mode():
                embedding = segmenter.encode(rgb)
                encoded = time.perf_counter()
                seg = segmenter.predict(embedding, Prompt(box=box))
            spec = entry.input
            x = normalize(classifier_input(to_gray(rgb), seg.box, seg.mask if spec.channels == 2 else None,
                                           spec.size, spec.roi_margin, spec.intensity)[None])
            logits, _ = logits_and_cam(model, x)  # the classifier and its Grad-CAM map, one pass as served
            with torch.inference_mode():
                if probe is not None:
                    f = probe_input(segmenter, embedding, seg.mask, seg.box, spec.roi_margin, entry.sam_probe.regions,
                                    entry.sam_probe.iou_token, entry.sam_probe.stages)
                    logits = fuse(logits, probe(f[None]), entry.sam_probe.alpha)
                torch.softmax(logits / entry.temperature, dim=1)
            if i:  # the first call warms up (and compiles)
                times[runtime]["total"].append(time.perf_counter() - start)
                times[runtime]["encode"].append(encoded - start)
    return times


async def analyse(client: httpx.AsyncClient, path: Path, box: list[int]) -> tuple[float, int, dict, dict]:
    """Latency, status, headers and the server's own per-stage times (ms)."""
    start = time.perf_counter()
    res = await client.post("/v1/analyses", files={"file": (path.name, path.read_bytes())},
                            data={"modality": "us", "prompt": json.dumps({"box": box})})
    stages = res.json().get("timings_ms", {}) if res.status_code == 201 else {}
    return time.perf_counter() - start, res.status_code, res.headers, stages


async def level(client: httpx.AsyncClient, cases, concurrency: int) -> dict:
    queue = list(cases)
    latencies, stages = [], []

    async def worker():
        while queue:
            path, box = queue.pop(0)
            seconds, status, _, ms = await analyse(client, path, box)
            assert status == 201, status
            latencies.append(seconds)
            stages.append(ms)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "n": len(latencies), "p50_s": statistics.median(latencies),
            "p95_s": float(np.percentile(latencies, 95)), "throughput_per_s": len(latencies) / wall,
            "stage_p50_ms": {k: statistics.median(ms[k] for ms in stages if k in ms)
                             for k in sorted({k for ms in stages for k in ms})}}


async def reprompt(client: httpx.AsyncClient, path: Path, box: list[int], n: int = 10
                   ) -> tuple[list[float], list[float]]:
    """Re-prompts on one uploaded image (its embedding cached): seconds at the client, and the server's own
    total from the Server-Timing header (reading the image, the decoder, the mask's PNG)."""
    res = await client.post("/v1/images", files={"file": (path.name, path.read_bytes())}, data={"modality": "us"})
    image_id = res.json()["image_id"]
    client_s, server_s = [], []
    for i in range(n):
        jitter = [box[0] + i % 3, box[1], box[2] - i % 2, box[3]]
        start = time.perf_counter()
        res = await client.post(f"/v1/images/{image_id}/segment", json={"prompt": {"box": jitter}})
        assert res.status_code == 200, res.text
        client_s.append(time.perf_counter() - start)
        timing = dict(part.split(";dur=") for part in res.headers["server-timing"].split(", "))
        server_s.append(float(timing["total"]) / 1000)
    return client_s, server_s


async def overload(client: httpx.AsyncClient, cases, queue_size: int) -> dict:
    results = await asyncio.gather(*(analyse(client, p, b) for p, b in cases[:queue_size + 8]))
    busy = [r for r in results if r[1] == 503]
    return {"sent": len(results), "ok": sum(r[1] == 201 for r in results), "busy_503": len(busy),
            "retry_after_present": all("retry-after" in r[2] for r in busy)}


async def served(port: int, token: str, cases, levels, per_level: int, queue_size: int) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=600, limits=limits) as client:
        await analyse(client, *cases[-1])  # warm-up
        out, offset = {"levels": []}, 0
        for c in levels:
            n = per_level * max(1, c // 2)
            out["levels"].append(await level(client, cases[offset:offset + n], c))
            offset += n
            print(f"  concurrency {c}: {out['levels'][-1]}", flush=True)
        out["reprompt_s"], out["reprompt_server_s"] = await reprompt(client, *cases[0])
        out["overload"] = await overload(client, cases[offset:], queue_size)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BRANET_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--per-level", type=int, default=8, help="requests per level (x concurrency/2 above 2)")
    parser.add_argument("--bare", type=int, default=9, help="images for the bare-model time")
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--runtimes", nargs="+", default=["torch", "openvino", "onnxruntime"],
                        help="image encoder runtimes timed bare, side by side")
    parser.add_argument("--serve-runtimes", nargs="*", default=None,
                        help="a server per runtime for the served steps (default: the default runtime only)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    parser.add_argument("--store", choices=["sqlite", "firestore"], default="sqlite",
                        help="firestore: the store's share of an analysis, Firestore vs SQLite (bench/store_share.py)")
    parser.add_argument("--store-images", type=int, default=21, help="with --store firestore: images (1st: warm-up)")
    parser.add_argument("--bytes-store", choices=["local", "cloud-storage"], default="local",
                        help="with --store firestore: where the Firestore server keeps image bytes "
                             "(BRANET_BYTES_STORE; cloud-storage on the Storage emulator)")
    args = parser.parse_args()
    if args.store == "firestore":
        import store_share
        runtime = args.serve_runtimes[0] if args.serve_runtimes else None
        out = store_share.run(busi_cases(args.data, args.store_images), runtime, bytes_store=args.bytes_store)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out | {"torch_threads": torch.get_num_threads(),
                                                  "cpu_count": os.cpu_count()}, indent=2))
        return
    from models.encoder_runtime import choose
    default = choose("cpu")[0]
    serve_runtimes = args.serve_runtimes if args.serve_runtimes is not None else [default]

    need = args.per_level * sum(max(1, c // 2) for c in args.levels) + args.queue_size + 8 + 1
    cases = busi_cases(args.data, need + args.bare)
    bare_cases, cases = cases[:args.bare], cases[args.bare:]
    print(f"bare model (LiteMedSAM encoder + decoder + classifier + probe), {len(bare_cases) - 1} images, "
          f"runtimes {', '.join(args.runtimes)} ...", flush=True)
    bares = bare_times(bare_cases, args.runtimes)
    by_runtime = {r: {"bare_s": statistics.median(t["total"]), "encode_s": statistics.median(t["encode"])}
                  for r, t in bares.items()}
    ref = by_runtime.get("torch")
    print(f"{'runtime':>12} {'bare ms':>8} {'encode ms':>10}" + (f" {'bare/torch':>11}" if ref else ""))
    for r, b in by_runtime.items():
        print(f"{r:>12} {b['bare_s'] * 1000:>8.0f} {b['encode_s'] * 1000:>10.0f}"
              + (f" {b['bare_s'] / ref['bare_s']:>11.2f}" if ref else ""), flush=True)

    results = {}
    for runtime in serve_runtimes:
        print(f"served, BRANET_ENCODER_RUNTIME={runtime} ...", flush=True)
        with tempfile.TemporaryDirectory() as home:
            token = subprocess.run([sys.executable, "-m", "server.cli", "users", "add", "--no-password", "bench"], capture_output=True,
                                   text=True, check=True, cwd=ROOT, env={**os.environ, "BRANET_HOME": home}).stdout.strip()
            port = launcher.free_port()
            env = launcher.server_env(Path(home), BRANET_QUEUE_SIZE=str(args.queue_size), BRANET_ENCODER_RUNTIME=runtime)
            with (Path(home) / "server.log").open("w") as log:
                try:
                    proc = launcher.start(port, env, log, timeout_s=300)
                except launcher.ServerDidNotStart as e:
                    raise SystemExit(str(e)) from None
            try:
                results[runtime] = asyncio.run(served(port, token, cases, args.levels, args.per_level, args.queue_size))
            finally:
                launcher.stop(proc)
        report(results[runtime], by_runtime.get(runtime, {}).get("bare_s") or by_runtime[args.runtimes[0]]["bare_s"],
               runtime, args.queue_size)
    out = {"bare": by_runtime, "served": results, "default_runtime": default,
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if len(serve_runtimes) == 1:  # the layout before runtimes were compared, for the default's numbers
        out |= results[serve_runtimes[0]] | {"bare_s": by_runtime.get(serve_runtimes[0], {}).get("bare_s")}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))


def report(result: dict, bare: float, runtime: str, queue_size: int) -> None:
    print(f"\n[{runtime}] bare model time: {bare * 1000:.0f} ms (median; torch threads {torch.get_num_threads()})")
    print(f"{'concurrency':>11} {'n':>3} {'p50 ms':>8} {'p95 ms':>8} {'p50/bare':>9} {'req/s':>7} {'x 1/bare':>9}")
    for lv in result["levels"]:
        print(f"{lv['concurrency']:>11} {lv['n']:>3} {lv['p50_s'] * 1000:>8.0f} {lv['p95_s'] * 1000:>8.0f} "
              f"{lv['p50_s'] / bare:>9.2f} {lv['throughput_per_s']:>7.2f} {lv['throughput_per_s'] * bare:>9.2f}")
    print("server stages at concurrency 1, p50 ms: " + ", ".join(
        f"{k} {v:.1f}" for k, v in result["levels"][0]["stage_p50_ms"].items()))
    rp, server = result["reprompt_s"], result["reprompt_server_s"]
    print(f"re-prompt on a cached image: p50 {statistics.median(rp) * 1000:.0f} ms, max {max(rp) * 1000:.0f} ms at "
          f"the client; server side (Server-Timing total) p50 {statistics.median(server) * 1000:.1f} ms, "
          f"max {max(server) * 1000:.1f} ms")
    ov = result["overload"]
    print(f"overload: {ov['sent']} at once with queue {queue_size}: {ov['ok']} answered 201, "
          f"{ov['busy_503']} answered 503 (Retry-After on all: {ov['retry_after_present']})")


if __name__ == "__main__":
    main()
