"""What a written model records about the code that made it."""
from __future__ import annotations

import subprocess


def git_commit() -> str:
    """The short hash of the checkout's HEAD, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
