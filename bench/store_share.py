"""The history store's share of an analysis' latency: Firestore (+ Firebase sign-in) against SQLite (+ local
sign-in), on the real emulators, in one run. Run through `bench/serve.py --store firestore`.

1. Starts the Firestore emulator (Debian google-cloud-cli-firestore-emulator) and the Auth emulator (npm
   firebase-tools in deploy/firebase) on free ports (server/firebase_emulators.py: bounded waits, logs in the
   work folder, quoted on failure), and two servers at once, each `bench/timed_server.py serve` (the real
   `branet serve`, its store and sign-in calls timed): local + sqlite (a local API token) and firebase + firestore
   (BRANET_FIREBASE_EMULATORS=true; a real ID token from the Auth emulator's REST sign-up).
2. At concurrency 1, every image goes to both servers, one after the other (which first alternates), so the
   pair of analyses sees the same load; a new image each time (nothing cached), multipart POST /v1/analyses
   with a box prompt, as bench/serve.py step 2. One warm-up analysis per server first (not counted).
3. Per analysis: its latency at the client, and the time the server spent in its history store (the sum of
   the timed store calls that began while the request was open: SQLite's add_image + add_analysis, Firestore's
   one batched add_analysis_with_image, each with its bytes written and fsync'd) and in checking the bearer.
   Reported: p50 / p95 of latency, store ms and store share (store / latency) per backend, the paired
   Firestore / SQLite ratios of latency, and Firestore's store time over the same image's SQLite analysis.
   Target (issue 22): Firestore's store share <= 5% of the analysis time at concurrency 1.
   With `bytes_store="cloud-storage"` the Firestore server keeps its bytes in Cloud Storage (PyPI
   gcp-storage-emulator, started here too): its store time then includes the uploads.
Everything started here is stopped at the end, also on failure."""
from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server import launcher  # noqa: E402
from server.firebase_emulators import (BUCKET, PROJECT, AuthRest, auth_emulator, firestore_emulator,  # noqa: E402
                                       storage_emulator)

BACKENDS = ("sqlite", "firestore")
TARGET_SHARE = 0.05


def start_server(name: str, home: Path, timings: Path, env_extra: dict, log: Path,
                 timeout_s: float = 600) -> tuple[subprocess.Popen, int]:
    """The instrumented server (bench/timed_server.py) with `env_extra`, never the emulators of this process'
    environment unless `env_extra` names them."""
    port = launcher.free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")}
    env |= {"BRANET_HOME": str(home), "BRANET_CREATE_DEV_USER": "false", "BRANET_BENCH_TIMINGS": str(timings),
            **env_extra}
    with log.open("a") as out:
        try:
            return launcher.start(port, env, out, timeout_s,
                                  command=(sys.executable, str(ROOT / "bench" / "timed_server.py"))), port
        except launcher.ServerDidNotStart as e:
            raise SystemExit(f"the {name} server did not start ({e}); its log {log}") from None


def analyse(client: httpx.Client, path: Path, box: list[int]) -> tuple[float, float, dict]:
    """Wall-clock start and end of one analysis (time.time(), as the server's timings), its server stages."""
    t0 = time.time()
    res = client.post("/v1/analyses", files={"file": (path.name, path.read_bytes())},
                      data={"modality": "us", "prompt": json.dumps({"box": box})})
    t1 = time.time()
    if res.status_code != 201:
        raise SystemExit(f"{client.base_url}: POST /v1/analyses answered {res.status_code}: {res.text[:500]}")
    body = res.json()
    return t0, t1, body.get("timings_ms", {}) | {"encoder_runtime": body.get("segmentation", {}).get("encoder_runtime")}


def attribute(requests: list[tuple[float, float, dict]], timings: Path) -> list[dict]:
    """Per request: latency, and the store and sign-in seconds of the timed calls that began during it."""
    calls = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
    out = []
    for t0, t1, stages in requests:
        inside = [c for c in calls if t0 <= c["t0"] <= t1]
        stages = dict(stages)
        out.append({"latency_s": t1 - t0, "encoder_runtime": stages.pop("encoder_runtime", None), "stages_ms": stages,
                    "store_s": sum(c["s"] for c in inside if c["kind"] == "store"),
                    "auth_s": sum(c["s"] for c in inside if c["kind"] == "auth"),
                    "store_calls": [c["name"] for c in inside if c["kind"] == "store"]})
    return out


def p50_p95(values) -> tuple[float, float]:
    values = list(values)
    return statistics.median(values), float(np.percentile(values, 95))


def summarise(rows: dict[str, list[dict]]) -> dict:
    out = {}
    for backend, rs in rows.items():
        out[backend] = {
            "n": len(rs),
            "latency_s": p50_p95(r["latency_s"] for r in rs),
            "store_ms": p50_p95(r["store_s"] * 1000 for r in rs),
            "store_share": p50_p95(r["store_s"] / r["latency_s"] for r in rs),
            "auth_ms": p50_p95(r["auth_s"] * 1000 for r in rs),
            "store_calls": sorted({",".join(r["store_calls"]) for r in rs}),
            "encoder_runtimes": sorted({str(r["encoder_runtime"]) for r in rs}),
            # the server's own time up to the store (models, rendering; not the final write, not sign-in)
            "server_total_ms": p50_p95(r["stages_ms"].get("total", 0.0) for r in rs),
        }
    sq, fs = rows["sqlite"], rows["firestore"]
    out["paired"] = {  # the same image through both servers
        "latency_firestore_over_sqlite": p50_p95(f["latency_s"] / s["latency_s"] for f, s in zip(fs, sq)),
        "firestore_store_over_sqlite_latency": p50_p95(f["store_s"] / s["latency_s"] for f, s in zip(fs, sq)),
        "store_ms_firestore_minus_sqlite": p50_p95((f["store_s"] - s["store_s"]) * 1000 for f, s in zip(fs, sq)),
    }
    share = out["firestore"]["store_share"]
    out["target"] = {"store_share_max": TARGET_SHARE, "met_p50": share[0] <= TARGET_SHARE,
                     "met_p95": share[1] <= TARGET_SHARE}
    return out


def report(summary: dict, threads: str) -> None:
    runtimes = sorted({r for b in BACKENDS for r in summary[b]["encoder_runtimes"]})
    print(f"\nstore share at concurrency 1 (Firestore bytes {summary.get('bytes_store', 'local')}, encoder runtime "
          f"{', '.join(runtimes)}, torch threads {threads}):")
    print(f"{'backend':>10} {'n':>3} {'p50 ms':>8} {'p95 ms':>8} {'store p50':>10} {'store p95':>10} "
          f"{'share p50':>10} {'share p95':>10} {'auth p50':>9} {'auth p95':>9} {'models p50':>11}")
    for backend in BACKENDS:
        s = summary[backend]
        print(f"{backend:>10} {s['n']:>3} {s['latency_s'][0] * 1000:>8.0f} {s['latency_s'][1] * 1000:>8.0f} "
              f"{s['store_ms'][0]:>10.1f} {s['store_ms'][1]:>10.1f} {s['store_share'][0]:>10.2%} "
              f"{s['store_share'][1]:>10.2%} {s['auth_ms'][0]:>9.1f} {s['auth_ms'][1]:>9.1f} "
              f"{s['server_total_ms'][0]:>11.0f}")
    p = summary["paired"]
    print(f"paired, same image: latency firestore/sqlite p50 {p['latency_firestore_over_sqlite'][0]:.3f}, "
          f"p95 {p['latency_firestore_over_sqlite'][1]:.3f}; Firestore's store time / the SQLite analysis' latency "
          f"p50 {p['firestore_store_over_sqlite_latency'][0]:.2%}, p95 {p['firestore_store_over_sqlite_latency'][1]:.2%}; "
          f"store ms firestore - sqlite p50 {p['store_ms_firestore_minus_sqlite'][0]:+.1f}, "
          f"p95 {p['store_ms_firestore_minus_sqlite'][1]:+.1f}")
    t = summary["target"]
    print(f"target: Firestore's store share <= {t['store_share_max']:.0%}: p50 {'met' if t['met_p50'] else 'NOT met'}, "
          f"p95 {'met' if t['met_p95'] else 'NOT met'}")


def run(cases: list[tuple[Path, list[int]]], runtime: str | None = None, keep_logs: Path | None = None,
        bytes_store: str = "local") -> dict:
    """cases: (image, box) pairs, the first one the warm-up; each later one goes to both servers. bytes_store: the
    Firestore server's BRANET_BYTES_STORE (local files, or cloud-storage on the Storage emulator)."""
    env_common = {"BRANET_ENCODER_RUNTIME": runtime} if runtime else {}
    procs: dict[str, subprocess.Popen] = {}
    with tempfile.TemporaryDirectory(prefix="branet-store-bench-") as tmp:
        work = Path(tmp)
        failed = True
        firestore, auth = firestore_emulator(work), auth_emulator(work)
        storage = storage_emulator(work) if bytes_store == "cloud-storage" else None
        try:
            print("starting the Firestore and Auth emulators ...", flush=True)
            firestore.start()
            auth.start()
            cloud = {}
            if storage is not None:
                storage.start()
                cloud = {"BRANET_BYTES_STORE": "cloud-storage", "BRANET_STORAGE_BUCKET": BUCKET,
                         "STORAGE_EMULATOR_HOST": storage.url}
            rest = AuthRest(auth.host)
            email = "bench@example.com"
            firebase_token = rest.sign_up(email)["idToken"]
            token_at = time.monotonic()
            home = {b: work / f"home-{b}" for b in BACKENDS}
            local_token = subprocess.run(
                [sys.executable, "-m", "server.cli", "users", "add", "--no-password", "bench"], capture_output=True,
                text=True, check=True, cwd=ROOT, env={**os.environ, "BRANET_HOME": str(home["sqlite"])}).stdout.strip()
            env = {"sqlite": env_common,
                   "firestore": env_common | {
                       "BRANET_AUTH": "firebase", "BRANET_STORE": "firestore", "BRANET_FIREBASE_PROJECT_ID": PROJECT,
                       "BRANET_FIREBASE_EMULATORS": "true", "FIRESTORE_EMULATOR_HOST": firestore.host,
                       "FIREBASE_AUTH_EMULATOR_HOST": auth.host} | cloud}
            timings = {b: work / f"timings-{b}.jsonl" for b in BACKENDS}
            ports = {}
            for b in BACKENDS:
                print(f"starting the {b} server ...", flush=True)
                procs[b], ports[b] = start_server(b, home[b], timings[b], env[b], work / f"server-{b}.log")
            clients = {b: httpx.Client(base_url=f"http://127.0.0.1:{ports[b]}", timeout=600) for b in BACKENDS}
            requests: dict[str, list] = {b: [] for b in BACKENDS}
            try:
                for i, (path, box) in enumerate(cases):
                    if time.monotonic() - token_at > 30 * 60:  # ID tokens live an hour
                        firebase_token, token_at = rest.sign_in(email)["idToken"], time.monotonic()
                    bearer = {"sqlite": local_token, "firestore": firebase_token}
                    for b in (BACKENDS if i % 2 else BACKENDS[::-1]):
                        clients[b].headers["Authorization"] = f"Bearer {bearer[b]}"
                        t0, t1, stages = analyse(clients[b], path, box)
                        if i:  # the first is the warm-up (first Firestore channel, first model call)
                            requests[b].append((t0, t1, stages))
                    if i:
                        print(f"  {i}/{len(cases) - 1}: " + ", ".join(
                            f"{b} {(requests[b][-1][1] - requests[b][-1][0]) * 1000:.0f} ms" for b in BACKENDS),
                            flush=True)
            finally:
                for c in clients.values():
                    c.close()
            rows = {b: attribute(requests[b], timings[b]) for b in BACKENDS}
            failed = False
        finally:
            for proc in procs.values():
                launcher.stop(proc)
            auth.stop()
            firestore.stop()
            if storage is not None:
                storage.stop()
            if keep_logs is not None or failed:
                target = keep_logs or Path(tempfile.mkdtemp(prefix="branet-store-bench-logs-"))
                target.mkdir(parents=True, exist_ok=True)
                for log in work.glob("*.log"):
                    (target / log.name).write_bytes(log.read_bytes())
                print(f"emulator and server logs kept in {target}", file=sys.stderr)
    summary = summarise(rows) | {"bytes_store": bytes_store}
    report(summary, os.environ.get("BRANET_TORCH_THREADS", "default"))
    return {"summary": summary, "requests": rows}
