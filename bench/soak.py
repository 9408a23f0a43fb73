"""Soak: a real `branet serve` under mixed traffic at concurrency 8 for a bounded time.

    .venv/bin/python bench/soak.py [--minutes 10] [--concurrency 8] [--data ../shared/data] [--out .cache/bench/soak]

Starts `branet serve` on a free port with a fresh BRANET_HOME (a user made with `branet users add`, as the
tests do), then 8 clients each pick their next request at random until the time is up:
- upload: POST /v1/images, a real BUSI image (every upload another image; the embedding is computed then);
- reprompt: POST /v1/images/{id}/segment, a jittered box from the expert mask, on one of the last 16 uploads;
- analysis: POST /v1/analyses JSON {image_id, box} on one of the last 16 uploads;
- analysis_upload: POST /v1/analyses multipart, a new image and its box in one call;
- history: GET /v1/analyses (limit 5), then the next page when there is one (history_page);
- read: GET one stored analysis, or its overlay.png;
- delete: DELETE /v1/analyses/{id} (204), then GET it (404);
- bad inputs, each expecting its documented 4xx with a JSON error: a truncated PNG (422 corrupt_image),
  a file over the 10 MB limit (413 too_large), a PNG header declaring 30000x30000 (422 too_many_pixels),
  a bad prompt (422: a box of 2 numbers, or one outside the image), no token (401 before the body is read).

Reports per kind and status the count, 5xx and unexpected answers; p50/p95 latency per kind in the first
and the last minute and their ratio; the server's resident memory (VmRSS from /proc/PID/status, sampled
every 2 s) and the SAM embedding cache's bytes (from /metrics). Targets: no 5xx and no unexpected status;
p95 in the last minute <= 1.2 x the first for the kinds that run the models; RSS growth after warm-up < 5%.
Warm-up ends once the embedding cache (BRANET_CACHE_MB, 1024 by default) is first full, and no sooner than the
end of the first minute: until then the cache filling is the growth, by design. The RSS slope over the last
half of the run (MiB/min, least squares) is reported beside it.
Writes soak.json and soak.png (latency over time, RSS over time) to --out; exits 1 if a target fails.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict, deque
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.launcher import BRANET, ServerDidNotStart, free_port, server_env  # noqa: E402
from server import launcher  # noqa: E402

# What each kind must answer (the documented status); anything else is counted as unexpected.
EXPECTED = {"upload": {201}, "reprompt": {200}, "analysis": {201}, "analysis_upload": {201}, "history": {200},
            "history_page": {200}, "read": {200}, "delete": {204}, "deleted_read": {404},
            "bad_corrupt": {422}, "bad_oversized": {413}, "bad_bomb": {422}, "bad_prompt": {422},
            "bad_no_auth": {401}}
ERROR_CODES = {"bad_corrupt": {"corrupt_image"}, "bad_oversized": {"too_large"}, "bad_bomb": {"too_many_pixels"},
               "bad_prompt": {"invalid_request", "invalid_prompt"}, "bad_no_auth": {"unauthorized"},
               "deleted_read": {"not_found"}}
MODEL_KINDS = ("upload", "reprompt", "analysis", "analysis_upload")  # the p95 ratio target applies to these
# Relative weights of what a client does next (bad inputs together about 1 in 10).
MIX = {"upload": 10, "reprompt": 30, "analysis": 12, "analysis_upload": 4, "history": 12, "read": 8, "delete": 6,
       "bad_corrupt": 2, "bad_oversized": 2, "bad_bomb": 2, "bad_prompt": 2, "bad_no_auth": 2}
EMBEDDING_MIB = 25  # one cached LiteMedSAM embedding with the probe's encoder stages (24.5 MiB)
RECENT = 16  # re-prompts and analyses go to one of the last RECENT uploads (as a user's session would)


def busi_cases(data: Path) -> list[tuple[Path, list[int]]]:
    """Every BUSI image with a lesion, its box from the expert mask; benign and malignant interleaved."""
    folder = data / "busi" / "Dataset_BUSI_with_GT"
    by_label = []
    for label in ("benign", "malignant"):
        cases = []
        for mask_path in sorted((folder / label).glob("* (*)_mask.png"),
                                key=lambda p: int(p.stem.split("(")[1].split(")")[0])):
            mask = np.asarray(Image.open(mask_path).convert("L")) > 0
            if mask.any():
                rows, cols = np.nonzero(mask)
                cases.append((mask_path.with_name(mask_path.name.replace("_mask", "")),
                              [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]))
        by_label.append(cases)
    if not by_label[0]:
        raise SystemExit(f"no BUSI images under {folder}: set --data or BRANET_DATA")
    n = min(map(len, by_label))
    return [c for pair in zip(*by_label) for c in pair] + [c for cases in by_label for c in cases[n:]]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int = 30000) -> bytes:
    """A PNG whose header declares side x side 8-bit gray pixels (the data itself is a few bytes)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + png_chunk(b"IEND", b""))


class RssSampler(threading.Thread):
    """VmRSS of `pid` (KiB -> MiB) and the embedding cache's bytes from /metrics, every `every` seconds."""

    def __init__(self, pid: int, url: str, start: float, every: float = 2.0):
        super().__init__(daemon=True)
        self.pid, self.url, self.start_t, self.every = pid, url, start, every
        self.samples: list[tuple[float, float, float | None]] = []  # (t, rss MiB, cache MiB)
        self.stopped = threading.Event()

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024

    def cache_mib(self) -> float | None:
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=5).text
            return float(re.search(r"^branet_embedding_cache_bytes ([0-9.e+]+)", text, re.M).group(1)) / 2**20
        except (httpx.HTTPError, AttributeError):
            return None

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.perf_counter() - self.start_t, self.rss_mib(), self.cache_mib()))
            self.stopped.wait(self.every)


def response_complete(raw: bytes) -> bool:
    """`raw` holds a whole HTTP/1.1 response with a Content-Length."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(sep) and length is not None and len(rest) >= int(length.group(1))


def exchange(host: str, port: int, head: bytes, body: bytes) -> bytes:
    """Send a request on a blocking socket, stopping the body as soon as the answer starts (the server
    may close without reading the rest: the kernel then resets the connection, and an answer already
    received is still read from the socket); the answer's bytes ("" if none came)."""
    raw = b""
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent < len(body):
                readable, writable, _ = select.select([sock], [sock], [], 60)
                if readable or not writable:
                    break
                sent += sock.send(body[sent:sent + 65536])
        except OSError:
            pass  # the server stopped reading: its answer is there to read
        try:
            while not response_complete(raw):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
        except OSError:
            pass
    return raw


class Traffic:
    def __init__(self, client: httpx.AsyncClient, cases, start: float, deadline: float, seed: int,
                 max_upload_bytes: int):
        self.client, self.cases, self.start, self.deadline = client, cases, start, deadline
        self.rng = random.Random(seed)
        self.host, self.port = client.base_url.host, client.base_url.port
        self.next_case = 0
        self.recent: deque[tuple[str, list[int], int, int]] = deque(maxlen=RECENT)  # (image id, box, w, h)
        self.analyses: list[str] = []  # stored, not being deleted
        self.image_of: dict[str, str] = {}  # analysis id -> its image id
        self.busy: Counter[str] = Counter()  # image id -> requests in flight on it
        self.records: list[dict] = []  # one per request: t, kind, status, seconds, error code
        self.oversized = b"\x89PNG\r\n\x1a\n" + b"\0" * (max_upload_bytes + 256 * 1024)
        self.bomb = bomb_png()

    def new_case(self) -> tuple[Path, list[int]]:
        case = self.cases[self.next_case % len(self.cases)]
        self.next_case += 1
        return case

    def record(self, kind: str, t0: float, status: int, body: bytes | None) -> None:
        code = None
        if status >= 400 or status == 0:
            try:
                code = json.loads(body)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "not-json"
        self.records.append({"t": t0 - self.start, "kind": kind, "status": status,
                             "s": time.perf_counter() - t0, "code": code})

    async def timed(self, kind: str, method: str, path: str, **kw) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            res = await self.client.request(method, path, **kw)
        except httpx.TransportError as err:  # counted as a failure (status 0), never a crash of the bench
            self.record(kind, t0, 0, json.dumps({"error": {"code": type(err).__name__}}).encode())
            return None
        self.record(kind, t0, res.status_code, res.content)
        return res

    async def refused_early(self, kind: str, body: bytes, headers: dict[str, str]) -> None:
        """POST /v1/images with `body` as a client that reads while it sends: the server answers a missing
        token or a body over the limit before reading all of it and closes the connection (Connection:
        close), so the rest is not sent. httpx would keep sending and lose the answer to the reset."""
        t0 = time.perf_counter()
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{self.host}:{self.port}",
                                                     "Content-Length": str(len(body)), **headers}.items())
        raw = await asyncio.to_thread(exchange, self.host, self.port,
                                      f"POST /v1/images HTTP/1.1\r\n{head}\r\n".encode(), body)
        status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0
        self.record(kind, t0, status, raw.partition(b"\r\n\r\n")[2])

    def multipart(self, name: str, data: bytes) -> tuple[bytes, dict[str, str]]:
        boundary = f"soak{self.rng.getrandbits(64):016x}"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"modality\"\r\n\r\nus\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def add_analysis(self, body: dict) -> None:
        self.analyses.append(body["id"])
        self.image_of[body["id"]] = body["image_id"]

    def pick_image(self) -> tuple[str, list[int], int, int] | None:
        return self.rng.choice(self.recent) if self.recent else None

    def jitter(self, box: list[int], w: int, h: int) -> list[int]:
        j = [self.rng.randint(-6, 6) for _ in range(4)]
        x0, y0 = max(0, box[0] + j[0]), max(0, box[1] + j[1])
        return [x0, y0, max(x0 + 4, min(w, box[2] + j[2])), max(y0 + 4, min(h, box[3] + j[3]))]

    async def upload(self, multipart_analysis: bool = False) -> None:
        path, box = self.new_case()
        files = {"file": (path.name, path.read_bytes(), "image/png")}
        if multipart_analysis:
            res = await self.timed("analysis_upload", "POST", "/v1/analyses", files=files,
                                   data={"modality": "us", "prompt": json.dumps({"box": box})})
            if res is not None and res.status_code == 201:
                self.add_analysis(res.json())
            return
        res = await self.timed("upload", "POST", "/v1/images", files=files, data={"modality": "us"})
        if res is not None and res.status_code == 201:
            body = res.json()
            self.recent.append((body["image_id"], box, body["width"], body["height"]))

    async def on_image(self, kind: str) -> None:
        picked = self.pick_image()
        if picked is None:
            return await self.upload()
        image_id, box, w, h = picked
        self.busy[image_id] += 1
        try:
            prompt = {"box": self.jitter(box, w, h)}
            if kind == "reprompt":
                await self.timed(kind, "POST", f"/v1/images/{image_id}/segment", json={"prompt": prompt})
            else:
                res = await self.timed(kind, "POST", "/v1/analyses", json={"image_id": image_id, "prompt": prompt})
                if res is not None and res.status_code == 201:
                    self.add_analysis(res.json())
        finally:
            self.busy[image_id] -= 1

    async def history(self) -> None:
        res = await self.timed("history", "GET", "/v1/analyses", params={"limit": 5})
        cursor = res.json().get("next_cursor") if res is not None and res.status_code == 200 else None
        if cursor:
            await self.timed("history_page", "GET", "/v1/analyses", params={"limit": 5, "cursor": cursor})

    async def read(self) -> None:
        if not self.analyses:
            return await self.history()
        analysis_id = self.rng.choice(self.analyses)
        suffix = "/overlay.png" if self.rng.random() < 0.5 else ""
        self.busy[analysis_id] += 1
        try:
            await self.timed("read", "GET", f"/v1/analyses/{analysis_id}{suffix}")
        finally:
            self.busy[analysis_id] -= 1

    async def delete(self) -> None:
        """Delete one of our analyses (its image goes too when no other analysis uses it), then read it: 404.
        The analysis and its image leave the pools first, and the delete waits for requests in flight on
        either, so no other client's request is answered 404 by this one's doing."""
        if not self.analyses:
            return await self.history()
        analysis_id = self.analyses.pop(self.rng.randrange(len(self.analyses)))
        image_id = self.image_of.get(analysis_id)
        for item in list(self.recent):
            if item[0] == image_id:
                self.recent.remove(item)
        while self.busy[analysis_id] or (image_id and self.busy[image_id]):
            await asyncio.sleep(0.05)
        res = await self.timed("delete", "DELETE", f"/v1/analyses/{analysis_id}")
        if res is not None and res.status_code == 204:
            await self.timed("deleted_read", "GET", f"/v1/analyses/{analysis_id}")

    async def bad(self, kind: str) -> None:
        if kind == "bad_corrupt":
            path, _ = self.cases[self.rng.randrange(len(self.cases))]
            data = path.read_bytes()
            files = {"file": ("cut.png", data[: len(data) // 2], "image/png")}
            await self.timed(kind, "POST", "/v1/images", files=files, data={"modality": "us"})
        elif kind == "bad_oversized":
            body, headers = self.multipart("big.png", self.oversized)
            await self.refused_early(kind, body, {**headers, "Authorization": self.client.headers["authorization"]})
        elif kind == "bad_bomb":
            files = {"file": ("bomb.png", self.bomb, "image/png")}
            await self.timed(kind, "POST", "/v1/images", files=files, data={"modality": "us"})
        elif kind == "bad_prompt":
            picked = self.pick_image()
            if picked is None:
                return await self.upload()
            image_id, _, w, h = picked
            prompt = self.rng.choice([{"box": [10, 10]}, {"box": [w + 10, h + 10, w + 60, h + 60]}])
            self.busy[image_id] += 1
            try:
                await self.timed(kind, "POST", f"/v1/images/{image_id}/segment", json={"prompt": prompt})
            finally:
                self.busy[image_id] -= 1
        else:  # bad_no_auth: a real upload without the token
            path, _ = self.cases[self.rng.randrange(len(self.cases))]
            await self.refused_early(kind, *self.multipart(path.name, path.read_bytes()))

    async def worker(self) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        while time.perf_counter() < self.deadline:
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "upload":
                await self.upload()
            elif kind == "analysis_upload":
                await self.upload(multipart_analysis=True)
            elif kind in ("reprompt", "analysis"):
                await self.on_image(kind)
            elif kind == "history":
                await self.history()
            elif kind == "read":
                await self.read()
            elif kind == "delete":
                await self.delete()
            else:
                await self.bad(kind)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def window_stats(records: list[dict], lo: float, hi: float) -> dict[str, dict]:
    by_kind = defaultdict(list)
    for r in records:
        if lo <= r["t"] < hi:
            by_kind[r["kind"]].append(r["s"])
    return {k: {"n": len(v), "p50_ms": percentile(v, 50) * 1000, "p95_ms": percentile(v, 95) * 1000}
            for k, v in by_kind.items()}


def warm_up_end(samples, cache_bound_mib: float, first: float) -> tuple[float, str]:
    """When the embedding cache is first full (within one embedding, 25 MiB, of its bound; no sooner than
    `first` s), else `first`."""
    for t, _, cache in samples:
        if cache is not None and cache >= cache_bound_mib - EMBEDDING_MIB:
            return (max(t, first), "embedding cache full")
    return first, "embedding cache never full: the first minute"


def summarise(records: list[dict], samples, seconds: float, cache_bound_mib: float, ratio_target: float,
              growth_target: float) -> dict:
    counts = defaultdict(Counter)
    for r in records:
        counts[r["kind"]][r["status"]] += 1
    server_errors = [r for r in records if r["status"] >= 500]
    unexpected = [r for r in records if r["status"] not in EXPECTED[r["kind"]]
                  or (r["kind"] in ERROR_CODES and r["code"] not in ERROR_CODES[r["kind"]])]
    not_json = sum(r["code"] == "not-json" for r in records)
    minute = min(60.0, seconds / 2)
    first, last = window_stats(records, 0, minute), window_stats(records, seconds - minute, seconds + 3600)
    ratios = {k: last[k]["p95_ms"] / first[k]["p95_ms"] for k in first if k in last}
    ratio_ok = {k: ratios.get(k) is not None and ratios[k] <= ratio_target for k in MODEL_KINDS}
    warm_t, warm_why = warm_up_end(samples, cache_bound_mib, minute)
    # RSS moves by +-100 MB with the requests in flight: the median of a minute, not one sample, on each side
    after = [(t, rss) for t, rss, _ in samples if t >= warm_t]
    span = min(minute, (seconds - warm_t) / 2)  # a minute each side, or half of what is left after warm-up
    early = [rss for t, rss in after if t < warm_t + span]
    late = [rss for t, rss in after if seconds - span <= t <= seconds]
    growth = statistics.median(late) / statistics.median(early) - 1 if early and late and span > 0 else None
    second_half = [(t, rss) for t, rss, _ in samples if seconds / 2 <= t <= seconds]
    slope = float(np.polyfit([t / 60 for t, _ in second_half], [r for _, r in second_half], 1)[0]) \
        if len(second_half) >= 3 else None
    peak_growth = max(rss for _, rss in after) / statistics.median(early) - 1 if early else None
    missing = sorted(set(EXPECTED) - set(counts))
    targets = {"every_kind_sent": not missing, "no_5xx": not server_errors, "no_unexpected_status": not unexpected, "all_errors_json": not not_json,
               **{f"p95_ratio_{k}": ok for k, ok in ratio_ok.items()},
               "rss_growth_after_warm_up": growth is not None and growth < growth_target}
    return {"seconds": seconds, "requests": len(records),
            "counts": {k: dict(sorted(c.items())) for k, c in sorted(counts.items())},
            "kinds_not_sent": missing, "server_errors": server_errors[:50], "unexpected": unexpected[:50], "not_json_errors": not_json,
            "window_s": minute, "first_minute": first, "last_minute": last, "p95_ratio_last_over_first": ratios,
            "rss": {"warm_up_end_s": warm_t, "warm_up_rule": warm_why, "window_s": span,
                    "after_warm_up_median_mib": statistics.median(early) if early else None,
                    "last_minute_median_mib": statistics.median(late) if late else None,
                    "max_after_warm_up_mib": max(rss for _, rss in after) if after else None,
                    "growth": growth, "peak_growth": peak_growth, "slope_second_half_mib_per_min": slope, "start_mib": samples[0][1] if samples else None},
            "targets": targets, "ok": all(targets.values())}


def plot(records: list[dict], samples, summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(13, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    kinds = sorted({r["kind"] for r in records}, key=lambda k: (k not in MODEL_KINDS, k))
    colours = plt.get_cmap("tab20")
    for i, kind in enumerate(kinds):
        rs = [r for r in records if r["kind"] == kind]
        ax.scatter([r["t"] / 60 for r in rs], [r["s"] * 1000 for r in rs], s=5, alpha=0.6, color=colours(i % 20),
                   label=kind)
    bad = [r for r in records if r["status"] >= 500]
    if bad:
        ax.scatter([r["t"] / 60 for r in bad], [r["s"] * 1000 for r in bad], s=40, marker="x", color="red", label="5xx")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), markerscale=2, title="sent at (min)")
    ax.set_title(f"soak: {summary['requests']} requests at concurrency {summary['concurrency']}, "
                 f"{summary['seconds'] / 60:.1f} min, 5xx: {len(summary['server_errors'])}")
    ts = [t / 60 for t, _, _ in samples]
    bx.plot(ts, [rss for _, rss, _ in samples], label="server VmRSS (MiB)")
    caches = [(t / 60, c) for t, _, c in samples if c is not None]
    if caches:
        bx.plot([t for t, _ in caches], [c for _, c in caches], label="embedding cache (MiB)")
    bx.axvline(summary["rss"]["warm_up_end_s"] / 60, color="gray", ls="--", label="end of warm-up")
    bx.set_xlabel("minutes")
    bx.set_ylabel("MiB")
    bx.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(s: dict, ratio_target: float, growth_target: float) -> None:
    print(f"\n{s['requests']} requests in {s['seconds'] / 60:.1f} min at concurrency {s['concurrency']}; "
          f"5xx: {len(s['server_errors'])}, unexpected status or code: {len(s['unexpected'])}, "
          f"non-JSON errors: {s['not_json_errors']}")
    w = s["window_s"]
    print(f"{'kind':>16} {'statuses':>22} | first {w:.0f} s: {'n':>4} {'p50 ms':>7} {'p95 ms':>7} | "
          f"last {w:.0f} s: {'n':>4} {'p50 ms':>7} {'p95 ms':>7} | p95 last/first")
    for kind, counts in s["counts"].items():
        f, la = s["first_minute"].get(kind), s["last_minute"].get(kind)
        cell = lambda x: f"{x['n']:>4} {x['p50_ms']:>7.0f} {x['p95_ms']:>7.0f}" if x else f"{'-':>4} {'-':>7} {'-':>7}"  # noqa: E731
        ratio = s["p95_ratio_last_over_first"].get(kind)
        flag = ("  (target)" if kind in MODEL_KINDS else "")
        statuses = " ".join(f"{k}:{v}" for k, v in counts.items())
        print(f"{kind:>16} {statuses:>22} | {'':>8}{cell(f)} | {'':>7}{cell(la)} | "
              f"{f'{ratio:.2f}' if ratio else '-':>5}{flag}")
    r = s["rss"]
    pct = lambda x: f"{x * 100:+.1f}%" if x is not None else "-"  # noqa: E731
    mib = lambda x: f"{x:.0f} MiB" if x is not None else "-"  # noqa: E731
    print(f"\nserver RSS: {mib(r['start_mib'])} at start; warm-up until {r['warm_up_end_s']:.0f} s ({r['warm_up_rule']}); "
          f"median {mib(r['after_warm_up_median_mib'])} in the {r['window_s']:.0f} s after it, "
          f"{mib(r['last_minute_median_mib'])} in the last {r['window_s']:.0f} s: growth {pct(r['growth'])}; "
          f"max {mib(r['max_after_warm_up_mib'])} ({pct(r['peak_growth'])}); over the second half of the run "
          f"{r['slope_second_half_mib_per_min']:+.1f} MiB/min")
    if s["kinds_not_sent"]:
        print(f"kinds never sent (too short a run?): {', '.join(s['kinds_not_sent'])}")
    print("\ntargets:")
    for name, ok in s["targets"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"  (p95 last/first <= {ratio_target} for {', '.join(MODEL_KINDS)}; RSS growth after warm-up "
          f"< {growth_target * 100:.0f}%)")


def busy_processes(exclude: set[int]) -> list[str]:
    """Other processes using the CPU now (ps), e.g. a training job sharing the machine."""
    out = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        pid, pcpu, etime, args = line.split(None, 3)
        if int(pid) not in exclude and float(pcpu) >= 20 and not args.startswith("ps "):
            rows.append(f"{pid} {pcpu}% {etime} {args[:160]}")
    return rows


async def drive(url: str, token: str, cases, concurrency: int, seconds: float, seed: int, max_upload_bytes: int,
                start: float) -> Traffic:
    limits = httpx.Limits(max_connections=concurrency * 2)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as client:
        traffic = Traffic(client, cases, start, start + seconds, seed, max_upload_bytes)
        bar = tqdm(total=int(seconds), unit="s", desc="soak", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30)

        async def progress():
            while time.perf_counter() < traffic.deadline:
                await asyncio.sleep(1)
                bar.set_postfix(requests=len(traffic.records),
                                s5xx=sum(r["status"] >= 500 for r in traffic.records), refresh=False)
                bar.update(min(int(seconds), int(time.perf_counter() - start)) - bar.n)
        await asyncio.gather(progress(), *(traffic.worker() for _ in range(concurrency)))
        bar.close()
    return traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the mixed traffic runs")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BRANET_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench" / "soak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-mb", type=float, help="the server's BRANET_CACHE_MB (default: its own, 1024)")
    parser.add_argument("--ratio-target", type=float, default=1.2)
    parser.add_argument("--growth-target", type=float, default=0.05)
    args = parser.parse_args()

    cases = busi_cases(args.data)
    rng = random.Random(args.seed)
    rng.shuffle(cases)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="branet-soak-") as tmp:
        home = Path(tmp)
        env = server_env(home, **({"BRANET_CACHE_MB": f"{args.cache_mb:g}"} if args.cache_mb else {}))
        token = subprocess.run([BRANET, "users", "add", "soak", "--no-password"], env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
        port, log = free_port(), (home / "server.log").open("w")
        try:
            proc = launcher.start(port, env, log)
        except ServerDidNotStart as e:
            raise SystemExit(str(e)) from None
        url = f"http://127.0.0.1:{port}"
        try:
            config = httpx.get(f"{url}/v1/config", timeout=10).json()
            max_upload_bytes = int(config["max_upload_bytes"])
            cache_bound_mib = float(env.get("BRANET_CACHE_MB", 1024))
            others = busy_processes({proc.pid, os.getpid()})
            load_start = os.getloadavg()
            print(f"server pid {proc.pid} on {url}; {len(cases)} BUSI images; {args.minutes:g} min at concurrency "
                  f"{args.concurrency}; load average {load_start[0]:.2f}", flush=True)
            for line in others:
                print(f"  also running: {line}", flush=True)
            start = time.perf_counter()
            sampler = RssSampler(proc.pid, url, start)
            sampler.start()
            traffic = asyncio.run(drive(url, token, cases, args.concurrency, seconds, args.seed, max_upload_bytes,
                                        start))
            sampler.stopped.set()
            sampler.join()
            elapsed = time.perf_counter() - start
            others_end = busy_processes({proc.pid, os.getpid()})
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()
        server_log = (home / "server.log").read_text()

    summary = summarise(traffic.records, sampler.samples, seconds, cache_bound_mib, args.ratio_target,
                        args.growth_target)
    summary["targets"]["server_alive_at_end"] = alive
    summary["ok"] = all(summary["targets"].values())
    summary |= {"elapsed_s": elapsed, "concurrency": args.concurrency, "minutes": args.minutes, "mix": MIX, "expected": {
        k: sorted(v) for k, v in EXPECTED.items()}, "cpu_count": os.cpu_count(), "load_average_start": load_start,
        "load_average_end": os.getloadavg(), "other_busy_processes_start": others,
        "other_busy_processes_end": others_end, "cache_bound_mib": cache_bound_mib,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(), "server_log_tail": server_log[-4000:],
        "rss_samples": sampler.samples, "records": traffic.records}
    (args.out / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(traffic.records, sampler.samples, summary, args.out / "soak.png")
    print_summary(summary, args.ratio_target, args.growth_target)
    print(f"\nwrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
