"""Latency and throughput while the server swaps model versions, next to the same load without swaps (issue 23).

    .venv/bin/python bench/swap.py [--data ../shared/data] [--concurrency 8] [--seconds 40] [--every 5]

Starts `branet serve` (fresh BRANET_HOME), deploys a second classifier-us version (the committed one with its
last layer scaled by 1.01: another sha256, the same cost), stores `--images` real BUSI images, then runs three
phases of `--seconds` each at `--concurrency` clients sending POST /v1/analyses (JSON, box prompt, stored
images: the embedding cache serves the encoder, as for a re-analysed image): steady, swapping (activate and
roll back in turn every `--every` s), steady again. The steady phases are pooled as the baseline, on either side
of the swaps so a drift in the machine's load shows. Prints p50 / p95 latency and throughput per phase and the
ratios swapping / steady (target: p95 within 1.2x); every answer must be 200/201 and name one of the two
versions' sha256. Writes bench/results/swap.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server import launcher  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def phase(url: str, token: str, images: list[dict], concurrency: int, seconds: float, shas: set[str],
                swap_every: float | None, v2: str) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    swaps: list[float] = []
    end = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {token}"}

    async def client(k: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as c:
            i = k
            while time.perf_counter() < end:
                image = images[i % len(images)]
                i += concurrency
                box = [image["width"] * 0.3, image["height"] * 0.3, image["width"] * 0.7, image["height"] * 0.7]
                start = time.perf_counter()
                res = await c.post("/v1/analyses", json={"image_id": image["image_id"], "prompt": {"box": box}})
                if res.status_code not in (200, 201) or res.json()["models"]["classifier"]["sha256"] not in shas:
                    failures.append(f"{res.status_code} {res.text[:200]}")
                else:
                    latencies.append(time.perf_counter() - start)

    async def swapper() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as c:
            n = 0
            while time.perf_counter() + swap_every < end:
                await asyncio.sleep(swap_every)
                start = time.perf_counter()
                res = await (c.post(f"/v1/admin/models/{v2}/activate") if n % 2 == 0
                             else c.post("/v1/admin/models/classifier-us/rollback"))
                res.raise_for_status()
                swaps.append(time.perf_counter() - start)
                n += 1
    began = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)), *([swapper()] if swap_every else []))
    wall = time.perf_counter() - began
    return {"requests": len(latencies), "failures": failures, "p50_s": percentile(latencies, 0.5),
            "p95_s": percentile(latencies, 0.95), "throughput_per_s": len(latencies) / wall, "wall_s": wall,
            "swaps": len(swaps), "swap_s_median": statistics.median(swaps) if swaps else None,
            "latencies": latencies}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BRANET_DATA", ROOT.parent / "shared" / "data")))
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--every", type=float, default=5.0)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "swap.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="branet-swap-"))
    home, port = work / "home", launcher.free_port()
    home.mkdir()
    env = launcher.server_env(home, BRANET_QUEUE_SIZE=str(max(16, 2 * args.concurrency)))
    token = subprocess.run([launcher.BRANET, "users", "add", "bench", "--admin", "--no-password"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    folder = launcher.us_classifier_variant(work, lambda model: model.fc.weight.mul_(1.01))
    log = (work / "server.log").open("w")
    try:
        server = launcher.start(port, env, log, timeout_s=300)
    except launcher.ServerDidNotStart as e:
        sys.exit(str(e))
    url = f"http://127.0.0.1:{port}"
    try:
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600)
        parts = [("manifest", ("manifest.json", (folder / "manifest.json").read_bytes()))]
        parts += [("files", (f.name, f.read_bytes())) for f in folder.glob("*.safetensors")]
        v2 = c.post("/v1/admin/models", data={"role": "classifier-us"}, files=parts)
        v2.raise_for_status()
        versions = c.get("/v1/models").json()["versions"]["classifier-us"]
        shas = {v["sha256"] for v in versions}
        busi = args.data / "busi" / "Dataset_BUSI_with_GT"
        paths = [p for label in ("benign", "malignant")
                 for p in sorted((busi / label).glob(f"{label} (*).png"))[:args.images // 2]]
        images = [c.post("/v1/images", files={"file": (p.name, p.read_bytes())}, data={"modality": "us"}).json()
                  for p in paths]
        run = lambda every: asyncio.run(phase(url, token, images, args.concurrency, args.seconds, shas, every,  # noqa: E731
                                              v2.json()["id"]))
        steady_a, swapping, steady_b = run(None), run(args.every), run(None)
    finally:
        launcher.stop(server)
        log.close()
    steady = steady_a["latencies"] + steady_b["latencies"]
    base = {"p50_s": percentile(steady, 0.5), "p95_s": percentile(steady, 0.95),
            "throughput_per_s": (steady_a["requests"] + steady_b["requests"]) / (steady_a["wall_s"] + steady_b["wall_s"])}
    ratios = {"p50": swapping["p50_s"] / base["p50_s"], "p95": swapping["p95_s"] / base["p95_s"],
              "throughput": swapping["throughput_per_s"] / base["throughput_per_s"]}
    failures = steady_a["failures"] + swapping["failures"] + steady_b["failures"]
    print(f"concurrency {args.concurrency}, {args.seconds:g} s per phase, a swap every {args.every:g} s "
          f"({swapping['swaps']} swaps, median {swapping['swap_s_median'] or 0:.2f} s each)")
    for name, ph in (("steady", steady_a), ("swapping", swapping), ("steady again", steady_b)):
        print(f"  {name:13s} n={ph['requests']:4d}  p50 {ph['p50_s']:.3f} s  p95 {ph['p95_s']:.3f} s  "
              f"{ph['throughput_per_s']:.2f}/s")
    print(f"  swapping / steady: p50 {ratios['p50']:.2f}x  p95 {ratios['p95']:.2f}x  throughput {ratios['throughput']:.2f}x"
          f"  (target p95 <= 1.2x)  failures {len(failures)}")
    report = {"concurrency": args.concurrency, "seconds": args.seconds, "every_s": args.every,
              "steady": base, "phases": {n: {k: v for k, v in ph.items() if k != "latencies"}
                                         for n, ph in (("steady_a", steady_a), ("swapping", swapping),
                                                       ("steady_b", steady_b))},
              "ratios": ratios, "failures": len(failures), "load": os.getloadavg(), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
