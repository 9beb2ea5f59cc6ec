"""Per-thread reusable block-sized buffers.

A fresh array of a block's size (hundreds of MB) costs its page faults on first touch every time it is
allocated -- measured at 0.1-0.9 s for 268 MB on the benchmark machine, as much as the arithmetic that
fills it -- because glibc returns allocations that large to the OS on free. A block worker thread reuses
one buffer per purpose instead: memory stays flat (one set per worker thread) and is touched once.

Only for arrays whose lifetime ends before the same thread asks for the same ``name`` again (one block's
data between upsampling and the write, the encoded block inside ``write_block``).
"""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def buffer(name: str, shape: tuple[int, ...], dtype: np.dtype | type | str) -> np.ndarray:
    """This thread's buffer ``name`` as an uninitialised array of ``shape`` and ``dtype`` (reallocated only
    when it is too small)."""
    pool: dict[str, np.ndarray] = _local.__dict__.setdefault("pool", {})
    dt = np.dtype(dtype)
    need = int(np.prod(shape)) * dt.itemsize
    raw = pool.get(name)
    if raw is None or raw.size < need:
        raw = np.empty(max(need, 1), dtype=np.uint8)
        pool[name] = raw
    return raw[:need].view(dt).reshape(shape)
