"""Process-level tuning that a long-running geosr process opts into explicitly (never at import).

glibc gives every thread that allocates concurrently its own malloc arena (up to 8 per core). geosr's
block workers and zarr's codec threads allocate and free many megabyte-sized buffers, and memory freed in
one arena is not reused by another, so the resident size creeps up with the number of blocks processed
(measured: peak RSS 2.7 GB instead of 1.7 GB for an 8192^2 x4 scene on 2 workers). Capping the arenas
keeps it flat at no measured speed cost. Same effect as ``MALLOC_ARENA_MAX=2`` in the environment,
which is what the container images set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for threads created from now on. Returns False where it does not apply
    (not glibc, e.g. macOS or musl)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_ARENA_MAX, int(arenas)))
    log.debug("malloc arenas capped at %d: %s", arenas, ok)
    return ok
