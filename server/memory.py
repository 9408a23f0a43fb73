"""Keep the server's resident memory flat under a long mixed load (issue 26's soak).

Every analysis allocates and frees buffers of several MB (SAM embeddings with their encoder stages, 25.7 MB
per image; decoded uploads; the encoder's outputs), from many threads. glibc's malloc raises its mmap
threshold each time such a buffer is freed (up to 32 MB), so later ones come from the heap arenas, one per
thread, where freed space is fragmented and rarely returned to the system: the soak measured +12% RSS
after warm-up. A fixed threshold keeps every large buffer in its own mapping, returned on free, and two
arenas bound the per-thread heaps. The same as the environment variables MALLOC_MMAP_THRESHOLD_ and
MALLOC_ARENA_MAX, set from inside because `branet serve` is started by people and orchestrators alike.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("branet")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD = 2 * 1024 * 1024
ARENA_MAX = 2


def keep_large_buffers_off_the_heap() -> bool:
    """Set glibc's mmap threshold and arena count; False (and nothing changed) where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
    if not ok:
        log.warning("branet: mallopt refused the mmap threshold / arena count; memory may grow under load")
    return ok
