"""Which readers open a store: what ``geosr info`` lists and what creating a Zarr v3 store warns about.

Checked by ``tests/test_readers.py`` against the real libraries: GDAL through rasterio's ``ZARR:`` driver,
xarray (``open_zarr`` for full resolution, ``open_datatree`` for every level), rioxarray and odc-geo.
GDAL 3.10 -- the one in rasterio 1.4's wheels -- cannot read Zarr v3 as zarr-python writes it (it
stops at the ``bytes`` codec: "Unsupported codec: bytes"); GDAL 3.11 and later read it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

GDAL_MIN = {2: (3, 4), 3: (3, 11)}  # oldest GDAL whose ZARR driver reads a store of that Zarr format


@dataclass(frozen=True)
class Reader:
    """One way to read the store: ``reads`` is whether it can on this machine (for GDAL: the GDAL that
    rasterio links here, ``version``), ``needs`` the version it takes, ``how`` the call."""

    name: str
    reads: bool
    needs: str
    how: str
    version: str | None = None


def gdal_version() -> tuple[int, int] | None:
    """(major, minor) of the GDAL that rasterio links here; None without rasterio."""
    try:
        import rasterio
    except ImportError:  # pragma: no cover - rasterio is a dependency
        return None
    m = re.match(r"(\d+)\.(\d+)", rasterio.__gdal_version__)
    return (int(m.group(1)), int(m.group(2))) if m else None


def readers(zarr_format: int, variable: str, gdal: tuple[int, int] | None = None) -> list[Reader]:
    """The readers of a store of ``zarr_format`` whose data variable is ``variable``; ``gdal`` is the local
    GDAL version (default: the one rasterio links; unknown counts as new enough)."""
    gdal = gdal if gdal is not None else gdal_version()
    low = GDAL_MIN[zarr_format]
    return [
        Reader("GDAL", gdal is None or gdal >= low, f">= {low[0]}.{low[1]}",
               f'ZARR:"<store>":/{variable}; overviews ZARR:"<store>":/overviews/<l>/{variable}',
               f"{gdal[0]}.{gdal[1]}" if gdal else None),
        Reader("xarray", True, "zarr-python 3", "xr.open_zarr(store): full resolution; "
               "xr.open_datatree(store, engine='zarr'): every level, overview l in group overviews/<l> "
               "(georeference its variable, or .to_dataset(inherit=False): the inherited view adds the root's x/y)"),
        Reader("rioxarray", True, "", ".rio.crs, .rio.transform(), .rio.nodata on any level's variable"),
        Reader("odc-geo", True, "", ".odc.geobox on any level's variable"),
        Reader("multiscales convention", True, "",
               "root attribute 'multiscales' (zarr-conventions, with proj/spatial): every level's array and transform"),
    ]


def warn_if_gdal_cannot_read(uri: str, zarr_format: int) -> None:
    """Log a warning when a store in ``zarr_format`` is out of reach of common GDAL builds (Zarr v3)."""
    if zarr_format != 3:
        return
    gdal = gdal_version()
    here = f"; this machine's rasterio has GDAL {gdal[0]}.{gdal[1]}" if gdal else ""
    log.warning(
        "%s is Zarr v3, which GDAL < %d.%d cannot read (rasterio 1.4 wheels ship GDAL 3.10%s); xarray, rioxarray "
        "and odc-geo read it. For GDAL/QGIS users write Zarr v2 (--zarr-format 2, output.zarr_format: 2)",
        uri, *GDAL_MIN[3], here,
    )
