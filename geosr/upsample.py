"""Super-resolve: the one tile stream of geosr. Batches of a block's tiles go through the model in the block's
tile order; a CUDA out-of-memory error halves the batch and retries the same tiles.

Halving never changes the output: every upsampler computes each tile independently of the other tiles in
its batch (the engine's partition invariance), so a block's bytes do not depend on the batch size.
``geosr run``, the Dask workers and ``geosr eval`` all upsample through :func:`upsample_tiles`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterator

import numpy as np

from .errors import ModelError
from .tiles import BlockInput
from .upsamplers import DrawsSamples, TileBatch, Upsampler, UpsamplesWindows
from .upsamplers.base import check_samples

log = logging.getLogger(__name__)


class BatchSize:
    """The batch size a model can afford: starts at the model's ``batch_size`` and halves on every CUDA
    out-of-memory error. Thread-safe; share one per loaded model (a Dask worker keeps it with the model)."""

    def __init__(self, start: int) -> None:
        self._size = max(1, int(start))
        self._lock = threading.Lock()
        self.halvings = 0

    @property
    def size(self) -> int:
        with self._lock:
            return self._size

    def halve(self, failed: int) -> int:
        """Record that ``failed`` tiles did not fit; returns the new batch size (at least 1)."""
        with self._lock:
            self._size = min(self._size, max(1, failed // 2))
            self.halvings += 1
            return self._size


def is_cuda_oom(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (``torch.cuda.OutOfMemoryError`` or the older RuntimeError text),
    also when a model wrapped it (e.g. in a ModelError): the whole cause chain is looked at."""
    import sys

    torch = sys.modules.get("torch")  # a model that ran on CUDA has imported torch; never import it here
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 8:
        seen.append(e)
        if oom is not None and isinstance(e, oom):
            return True
        text = str(e).lower()
        if isinstance(e, RuntimeError) and "out of memory" in text and ("cuda" in text or "cublas" in text):
            return True
        e = e.__cause__ or e.__context__
    return False


def free_cuda_memory() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def upsample_tiles(upsampler: Upsampler, pixels: np.ndarray, origins: np.ndarray, seed: int, samples: int = 0,
                   batch: BatchSize | None = None) -> Iterator[Any]:
    """Yield the upsampled tiles (C, sT, sT) float32 in order, ``batch.size`` tiles per model call.

    With ``samples`` (``output.uncertainty_samples``, >= 2) every call is ``sample_with_std(batch, samples)``
    (:class:`~geosr.upsamplers.DrawsSamples`) and each item is a (mean, std) pair of tiles. A CUDA
    out-of-memory error halves ``batch`` (for this and every later block that shares it) and retries the
    same tiles; out of memory with a single tile is a :class:`~geosr.errors.ModelError`."""
    sizer = batch or BatchSize(upsampler.batch_size)
    n = pixels.shape[0]
    i = 0
    while i < n:
        tiles = TileBatch(pixels[i : i + sizer.size], origins[i : i + sizer.size], seed=seed)
        oom: BaseException | None = None
        try:
            out: Any
            if samples:
                assert isinstance(upsampler, DrawsSamples), "require_sampling() refuses such a model up front"
                mean, std = upsampler.sample_with_std(tiles, samples)
                check_samples(tiles, mean, std, upsampler.scale)
                out = zip(mean, std)
            else:
                out = upsampler(tiles)
        except Exception as e:
            if not is_cuda_oom(e):
                raise
            oom = e
        if oom is not None:
            if len(tiles) <= 1:
                raise ModelError(f"model {upsampler.name} runs out of GPU memory on a single tile ({oom}); use a "
                                 "smaller tiling.tile or a GPU with more memory")
            new = sizer.halve(len(tiles))
            log.warning("CUDA out of memory with %d tiles per batch; retrying with %d", len(tiles), new)
            del oom
            free_cuda_memory()
            continue
        i += len(tiles)
        yield from out


def block_tiles(upsampler: Upsampler, inp: BlockInput, seed: int, samples: int = 0,
                batch: BatchSize | None = None) -> Iterator[Any]:
    """:func:`upsample_tiles` over the tiles of one block (those with a valid pixel)."""
    return upsample_tiles(upsampler, inp.pixels, inp.origins, seed, samples, batch)


def window_upsample(upsampler: Upsampler, inp: BlockInput, ramp: str, out: np.ndarray | None = None) -> np.ndarray | None:
    """The block's blended output straight from its window when the model has a window path
    (:class:`~geosr.upsamplers.UpsamplesWindows`) and the window allows it; None means: use the tiles.
    Same bytes either way."""
    if not isinstance(upsampler, UpsamplesWindows):
        return None
    return upsampler.upsample_block_window(inp.grid, inp.block, inp.window, inp.window_valid, inp.window_origin,
                                           ramp, out=out)
