"""The web app's own time on top of the server's answers, in a real browser on real BUSI images.

    .venv/bin/python bench/app.py [--data ../shared/data] [--images 6] [--reprompts 3]

Starts `branet serve` (fresh BRANET_HOME, the web export in mobile/dist: `make app` first) and drives
the app in Debian's chromium (mobile/e2e/bench.mjs): choose a file -> image on screen; draw a box ->
first outline; redraw it -> each re-prompt's outline; classify -> the label. Each time is reported
with the API calls the app waited for (the browser's network timings) and the server's own
per-stage timings, and the difference: what the app adds. Also the web bundle's gzipped size.
Targets: the app adds <= 150 ms to any server answer; a re-prompt's outline on screen <= 250 ms;
bundle < 3 MB gzipped.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve import busi_cases, free_port, start_server  # noqa: E402

MOBILE = ROOT / "mobile"
PASSWORD = "bench-password-1"


def bundle_gzip_bytes(dist: Path) -> int:
    return sum(len(gzip.compress(p.read_bytes(), 9)) for p in dist.rglob("*") if p.suffix in {".js", ".html", ".css"})


def p50(values: list[float]) -> float:
    return float(statistics.median(values))


def summarise(rows: list[dict]) -> dict:
    def stat(items: list[dict]) -> dict:
        return {"total_ms_p50": p50([i["total"] for i in items]), "api_ms_p50": p50([i["api"] for i in items]),
                "app_ms_p50": p50([i["total"] - i["api"] for i in items]),
                "app_ms_max": max(i["total"] - i["api"] for i in items), "n": len(items)}
    reprompts = [r for row in rows for r in row["reprompts"]]
    server = {stage: p50([r["server"][stage] for r in reprompts if r["server"]]) for stage in ("encode", "decode")}
    return {"show_image": stat([r["show_image"] for r in rows]), "first_outline": stat([r["first_outline"] for r in rows]),
            "reprompt": {**stat(reprompts), "server_p50_ms": server},
            "classify": {**stat([r["classify"] for r in rows]),
                         "server_total_ms_p50": p50([r["classify"]["server"]["total"] for r in rows])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BRANET_DATA", ROOT / ".." / "shared" / "data")))
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--reprompts", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "app.json")
    args = parser.parse_args()
    dist = MOBILE / "dist"
    if not (dist / "index.html").exists():
        raise SystemExit("no web export in mobile/dist: run `make app`")
    cases = [{"path": str(path), "box": box, "width": Image.open(path).size[0]} for path, box in busi_cases(args.data, args.images)]
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "BRANET_HOME": home}
        subprocess.run([sys.executable, "-m", "server.cli", "users", "add", "bench", "--password-stdin"], input=PASSWORD + "\n",
                       text=True, env=env, cwd=ROOT, check=True, capture_output=True)
        port = free_port()
        server = start_server(Path(home), port, {"BRANET_APP_DIR": str(dist)})
        try:
            run = subprocess.run(["node", "e2e/bench.mjs"], cwd=MOBILE, capture_output=True, text=True, check=False,
                                 env={**os.environ, "BASE_URL": f"http://127.0.0.1:{port}", "USERNAME": "bench",
                                      "PASSWORD": PASSWORD, "CASES": json.dumps(cases), "REPROMPTS": str(args.reprompts)})
        finally:
            server.terminate()
            server.wait(timeout=30)
    sys.stderr.write(run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"the browser run failed ({run.returncode})")
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    report = {"images": len(cases), "reprompts_per_image": args.reprompts, "bundle_gzip_bytes": bundle_gzip_bytes(dist),
              "outside_requests": measured["outside"], "summary": summarise(measured["rows"]), "rows": measured["rows"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'step':<14} {'on screen p50':>14} {'API p50':>9} {'app p50':>9} {'app max':>9}  (ms)")
    for step in ("show_image", "first_outline", "reprompt", "classify"):
        s = report["summary"][step]
        print(f"{step:<14} {s['total_ms_p50']:>14.0f} {s['api_ms_p50']:>9.0f} {s['app_ms_p50']:>9.0f} {s['app_ms_max']:>9.0f}")
    print(f"re-prompt server p50: {report['summary']['reprompt']['server_p50_ms']}; classify server total p50: "
          f"{report['summary']['classify']['server_total_ms_p50']:.0f} ms; bundle {report['bundle_gzip_bytes'] / 1e6:.2f} MB gzipped")


if __name__ == "__main__":
    main()
