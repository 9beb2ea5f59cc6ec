"""Position-keyed Gaussian noise: a pure function of (seed, stream, channel, global latent row, col).

Tiles that overlap in the scene read the *same* noise where they overlap, so the noise field does not
depend on how the scene was cut into tiles, blocks or batches, and a seed reproduces a run exactly.

The generator is counter based: splitmix64 finalisers chain the key into a 64-bit hash, two more
finalisers give two 53-bit uniforms, Box-Muller gives one normal. It is written once for torch int64
tensors (CPU and CUDA run the same integer ops, so the uniforms are bit-identical; the float64
log/cos may differ by an ulp between devices before the cast to float32) and once in numpy uint64 as
the reference the tests compare against.

``stream`` separates independent noise draws: 0 is the initial latent, ``k >= 1`` the noise injected at
sampler step ``k``; a different sample index (uncertainty) uses a different seed via :func:`sample_seed`.
"""

from __future__ import annotations

import numpy as np
import torch

_M64 = (1 << 64) - 1
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_GOLDEN = 0x9E3779B97F4A7C15


def _signed(v: int) -> int:
    v &= _M64
    return v - (1 << 64) if v >= 1 << 63 else v


def mix_int(z: int) -> int:
    """splitmix64 finaliser on a Python int (mod 2**64)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def stream_key(seed: int, stream: int, channel: int) -> int:
    """64-bit key of one (seed, stream, channel) noise plane."""
    h = mix_int(int(seed) + _GOLDEN)
    h = mix_int(h ^ (int(stream) & _M64))
    return mix_int(h ^ (int(channel) & _M64))


def sample_seed(seed: int, sample: int) -> int:
    """Seed of the ``sample``-th independent draw (sample 0 is ``seed`` itself)."""
    return int(seed) if sample == 0 else mix_int(mix_int(int(seed)) ^ (int(sample) * _GOLDEN)) & ((1 << 63) - 1)


# --- torch (any device) ----------------------------------------------------------------------------------

def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix_t(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _srl(z, 30)) * _signed(_C1)
    z = (z ^ _srl(z, 27)) * _signed(_C2)
    return z ^ _srl(z, 31)


def _normal_from_hash_t(h: torch.Tensor) -> torch.Tensor:
    a = _mix_t(h ^ 1)
    b = _mix_t(h ^ 2)
    u1 = (_srl(a, 11).double() + 0.5) * 2.0**-53  # (0, 1)
    u2 = _srl(b, 11).double() * 2.0**-53  # [0, 1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)


def keyed_noise(seed: int, stream: int, channels: int, rows: torch.Tensor, cols: torch.Tensor,
                keyed: bool = True, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Noise of shape ``(B, channels, h, w)`` for tiles whose global latent rows/cols are ``rows`` (B, h) and
    ``cols`` (B, w) int64 tensors. ``keyed=False`` draws independent noise from ``generator`` instead
    (LDSR-S2-style tiling, kept for comparisons)."""
    b, h = rows.shape
    w = cols.shape[1]
    if not keyed:
        return torch.randn((b, channels, h, w), generator=generator, device=rows.device, dtype=torch.float32).to(dtype)
    out = torch.empty((b, channels, h, w), device=rows.device, dtype=dtype)
    r = rows.to(torch.int64)
    c = cols.to(torch.int64)
    for ch in range(channels):
        key = _signed(stream_key(seed, stream, ch))
        hr = _mix_t(r ^ key)  # (B, h)
        hp = _mix_t(hr[:, :, None] ^ c[:, None, :])  # (B, h, w)
        out[:, ch] = _normal_from_hash_t(hp).to(dtype)
    return out


def tile_coords(origins: np.ndarray, size: tuple[int, int], per_px: int, device: str | torch.device = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Global latent rows (B, h) and cols (B, w) of tiles whose low-res top-left pixels are ``origins`` (B, 2);
    ``per_px`` latent pixels per low-res pixel."""
    o = torch.as_tensor(np.asarray(origins, dtype=np.int64), device=device) * int(per_px)
    h, w = size
    rows = o[:, :1] + torch.arange(h, device=device, dtype=torch.int64)[None]
    cols = o[:, 1:2] + torch.arange(w, device=device, dtype=torch.int64)[None]
    return rows, cols


# --- numpy reference ----------------------------------------------------------------------------------------

def _mix_np(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_C1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_C2)
    return z ^ (z >> np.uint64(31))


def keyed_noise_numpy(seed: int, stream: int, channel: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Reference implementation for one channel: (len(rows), len(cols)) float32 for global latent rows/cols."""
    key = np.uint64(stream_key(seed, stream, channel))
    r = np.asarray(rows, dtype=np.int64).astype(np.uint64)
    c = np.asarray(cols, dtype=np.int64).astype(np.uint64)
    hp = _mix_np(_mix_np(r ^ key)[:, None] ^ c[None, :])
    a = _mix_np(hp ^ np.uint64(1))
    b = _mix_np(hp ^ np.uint64(2))
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    u2 = (b >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)
