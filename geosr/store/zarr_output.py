"""``ZarrOutput``: the output store of one scene, written block by block by many workers at once.

Lifecycle (see ``docs/architecture.md``, Store contract)::

    out = ZarrOutput.create(uri, spec, env, plan_hash)   # all metadata + coordinates, no pixels
    out.write_block(block, data, valid[, std=std])       # any worker, any order, each block once
    out.mark_done(block, stats)                          # after the block's chunks are stored
    out.finalize(provenance)                             # overview tail, attrs, STAC, completion marker

Concurrency: a block owns whole chunks (and whole shards) at every level it writes, so workers never
write the same object and never merge into another block's data (zarr-python's sharding codec still
GETs a shard before replacing it whole; that object is the block's own); metadata is written only by
``create`` and ``finalize``. Nothing half-written is marked: a block's marker follows its chunks, and the completion
marker (``.geosr/complete.json``, plus ``geosr.complete`` in the root attributes) is written last.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from typing import Any

import numpy as np

from ..errors import OutputError, OutputExistsError
from ..grid import Block
from ..io.storage import StorageEnv
from ..scratch import buffer
from .backend import StoreLocation, storage_errors
from .encode import encode, nodata, valid_mask
from .layout import create_hierarchy
from .ledger import Ledger
from .overviews import Level, block_pyramid, build_tail, plan_levels
from .provenance import ATTR, finalized_record, jsonable, store_record, utcnow
from .readers import warn_if_gdal_cannot_read
from .spec import OutputSpec
from .stac import build_stac_item, stac_item_uri, write_stac_item

log = logging.getLogger(__name__)

_ZARR_MARKERS = (".zgroup", ".zarray", ".zattrs", ".zmetadata", "zarr.json")


class ZarrOutput:
    """An open output store. Build it with :meth:`create` or :meth:`open`, not directly.

    Picklable: an unpickled copy reopens the store (so it can be shipped to worker processes)."""

    def __init__(self, loc: StoreLocation, spec: OutputSpec, plan_hash: str, created: str) -> None:
        self._loc = loc
        self.spec = spec
        self.plan_hash = plan_hash
        self.created = created
        self.levels: tuple[Level, ...] = plan_levels(spec)
        self._ledger = Ledger(loc)
        self._lock = threading.Lock()
        self._arrays: dict[str, Any] = {}  # open arrays by path
        self._written: set[str] = set()

    def __reduce__(self):
        return (ZarrOutput.open, (self.uri, self.env))

    def __repr__(self) -> str:
        return f"ZarrOutput({self.uri!r}, shape={self.spec.shape}, plan={self.plan_hash})"

    @property
    def uri(self) -> str:
        return self._loc.uri

    @property
    def env(self) -> StorageEnv:
        return self._loc.env

    @property
    def stac_item_uri(self) -> str:
        return stac_item_uri(self.uri)

    # -- create / open -------------------------------------------------------------------------------
    @classmethod
    def create(cls, uri: str, spec: OutputSpec, env: StorageEnv, plan_hash: str,
               overwrite: bool = False, made_from: dict[str, Any] | None = None) -> "ZarrOutput":
        """Create the store at ``uri`` with all its metadata (no pixels yet). ``made_from`` (what the output is
        made from: input checksum, parameters, model; :meth:`geosr.plan.ScenePlan.record`) is kept in the
        ledger, so a later run can say what differs.

        An existing store raises :class:`OutputExistsError` unless ``overwrite`` (then it is deleted
        first, with its STAC item); a directory that holds something other than a Zarr store is never
        deleted. A store whose creation was interrupted is replaced silently."""
        loc = StoreLocation(uri, env)
        loc.check_bucket()
        _clear_location(loc, overwrite)
        ledger = Ledger(loc)
        created = utcnow()
        levels = plan_levels(spec)
        with storage_errors(loc.uri, "create the output store"):
            ledger.begin_create({"plan_hash": plan_hash, "started": created})
            create_hierarchy(loc.zarr_store(), spec, levels, store_record(spec, plan_hash, created, levels))
            _consolidate(loc, spec.zarr_format)
            ledger.write_plan({
                "plan_hash": plan_hash,
                "created": created,
                "spec": spec.to_dict(),
                "blocks": {"block": spec.block, "grid": list(spec.block_grid_shape), "total": spec.n_blocks},
                **({"made_from": made_from} if made_from is not None else {}),
            })
            ledger.end_create()
        log.info("created %s (%d blocks, %d overview levels)", loc.uri, spec.n_blocks, len(levels) - 1)
        warn_if_gdal_cannot_read(loc.uri, spec.zarr_format)
        return cls(loc, spec, plan_hash, created)

    @classmethod
    def open(cls, uri: str, env: StorageEnv, plan_hash: str | None = None) -> "ZarrOutput":
        """Open an existing store for writing (resume) or reading. With ``plan_hash``, raise
        :class:`OutputExistsError` unless the store was created for that plan."""
        loc = StoreLocation(uri, env)
        loc.check_bucket()
        plan = Ledger(loc).read_plan()
        if plan is None:
            raise OutputError(
                f"{loc.uri} is not a geosr output store (no .geosr/plan.json); check the path, or create it "
                "by running the scene"
            )
        if plan_hash is not None and plan.get("plan_hash") != plan_hash:
            raise OutputExistsError(
                f"{loc.uri} was created for plan {plan.get('plan_hash')}, not {plan_hash}: its input or parameters "
                "differ; rerun with the original parameters to resume, or overwrite it"
            )
        spec = OutputSpec.from_dict(plan["spec"])
        return cls(loc, spec, plan["plan_hash"], plan.get("created", ""))

    # -- writing -------------------------------------------------------------------------------------
    def _array(self, level: int, variable: str | None = None) -> Any:
        """The open array of ``variable`` (default: the data variable) at ``level``."""
        path = self.levels[level].array_path(variable or self.spec.variable)
        with self._lock:
            arr = self._arrays.get(path)
            if arr is None:
                import zarr

                with storage_errors(self.uri, "open"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", category=UserWarning)
                    arr = zarr.open_array(self._loc.zarr_store(), path=path, mode="r+",
                                          zarr_format=self.spec.zarr_format)
                self._arrays[path] = arr
            return arr

    def write_block(self, block: Block, data: np.ndarray, valid: np.ndarray, std: np.ndarray | None = None) -> None:
        """Encode and write exactly ``block``'s region: level 0 and the overview levels it owns.

        ``data`` is (bands, h, w) float reflectance, ``valid`` (h, w) bool; invalid or non-finite pixels
        become nodata. ``std`` (bands, h, w), the per-pixel standard deviation, is required exactly when
        the store has a std variable (``spec.uncertainty_samples``); it is written at level 0 only, encoded
        like ``data``, and is nodata wherever ``data`` is. Rewriting a block writes the same bytes (safe
        after a crash)."""
        spec = self.spec
        spec.check_block(block)
        h, w = block.shape
        if data.shape != (spec.bands, h, w):
            raise ValueError(f"block {block.key}: data is {data.shape}, expected (bands, h, w) = {(spec.bands, h, w)}")
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (h, w):
            raise ValueError(f"block {block.key}: valid mask is {valid.shape}, expected {(h, w)}")
        if spec.std_variable is None and std is not None:
            raise ValueError(f"block {block.key}: got a std, but {self.uri} has no std variable (it was created "
                             "with uncertainty_samples=0)")
        if spec.std_variable is not None:
            if std is None:
                raise ValueError(f"block {block.key}: {self.uri} has a std variable ({spec.std_variable}); pass "
                                 "std= with the data, or the block would be marked done without it")
            if std.shape != data.shape:
                raise ValueError(f"block {block.key}: std is {std.shape}, expected {data.shape} like the data")
        # per-thread buffers: the encoded block lives only inside this call (see geosr/scratch.py)
        raw = encode(data, valid, spec.dtype, out=buffer("encoded", data.shape, spec.dtype))
        raw_std = None
        if std is not None:
            raw_std = encode(std, valid, spec.dtype, out=buffer("encoded_std", data.shape, spec.dtype))
            raw_std[~valid_mask(raw, spec.dtype)] = nodata(spec.dtype)  # nodata wherever the data is
        with storage_errors(self.uri, "write"):
            self._array(0)[:, block.y0:block.y1, block.x0:block.x1] = raw
            if raw_std is not None:
                self._array(0, spec.std_variable)[:, block.y0:block.y1, block.x0:block.x1] = raw_std
            for lv, level_raw in block_pyramid(raw, self.levels, spec.dtype, buffer):
                rows, cols = lv.region(spec, block.y0, block.y1, block.x0, block.x1)
                if level_raw.shape[1:] != (rows.stop - rows.start, cols.stop - cols.start):
                    raise AssertionError(f"level {lv.index} of block {block.key}: {level_raw.shape} vs {rows}, {cols}")
                self._array(lv.index)[:, rows, cols] = level_raw
        with self._lock:
            self._written.add(block.key)

    def mark_done(self, block: Block, stats: dict[str, Any]) -> None:
        """Record ``block`` as done (with its ``stats``). Call it after :meth:`write_block` returned, in
        the same process: a block is marked only once its chunks are stored."""
        self.spec.check_block(block)
        with self._lock:
            written = block.key in self._written
        if not written:
            raise ValueError(
                f"mark_done({block.key}) before write_block({block.key}) in this process: a block is marked "
                "done only after its chunks are written"
            )
        self._ledger.mark_done(block.key, {
            "key": block.key,
            "region": [block.y0, block.y1, block.x0, block.x1],
            "time": utcnow(),
            "stats": jsonable(stats),
        })

    def done_blocks(self) -> dict[str, dict]:
        """{block key: stats} of the blocks marked done (by any worker, in any earlier run)."""
        keys = self.spec.block_keys
        return {k: doc.get("stats", {}) for k, doc in self._ledger.done().items() if k in keys}

    def missing_blocks(self) -> list[Block]:
        """The blocks not marked done yet, in grid order."""
        done = self._ledger.done_keys()
        return [b for b in self.spec.blocks() if b.key not in done]

    # -- finishing -----------------------------------------------------------------------------------
    def finalize(self, provenance: dict[str, Any], *, stac: bool = True) -> None:
        """Finish the store once every block is done, in this order: compute the overview levels no
        block wrote; write the STAC item beside the store (unless ``stac`` is false); record provenance
        and ``geosr.complete = true`` in the root attributes and refresh the consolidated metadata;
        write ``.geosr/complete.json`` last. Safe to repeat after an interruption."""
        missing = self.missing_blocks()
        if missing:
            sample = ", ".join(b.key for b in missing[:5])
            raise OutputError(
                f"cannot finalize {self.uri}: {len(missing)} of {self.spec.n_blocks} blocks are not done yet "
                f"({sample}{', ...' if len(missing) > 5 else ''}); run the scene again to finish them"
            )
        import zarr

        dtype = self.spec.dtype
        with storage_errors(self.uri, "finalize"):
            tail = build_tail(
                self.levels, dtype,
                read=lambda lv, rows, cols: np.asarray(self._array(lv.index)[:, rows, cols]),
                write=lambda lv, rows, cols, raw: self._array(lv.index).__setitem__((slice(None), rows, cols), raw),
            )
            if tail:
                log.info("%s: computed overview levels %s", self.uri, tail)
            swept = sweep_interrupted_writes(self._loc)
            if swept:
                log.info("%s: removed %d temporary file(s) of interrupted chunk writes", self.uri, len(swept))
            finished = utcnow()
            if stac:
                item = build_stac_item(self.uri, self.spec, {"plan_hash": self.plan_hash, **provenance})
                write_stac_item(self.uri, self.env, item)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=UserWarning)
                root = zarr.open_group(self._loc.zarr_store(), mode="r+", zarr_format=self.spec.zarr_format,
                                       use_consolidated=False)
                found: Any = root.attrs.get(ATTR)
                record = dict(found or store_record(self.spec, self.plan_hash, self.created, self.levels))
                root.update_attributes({ATTR: finalized_record(record, provenance, finished)})
            _consolidate(self._loc, self.spec.zarr_format)
            self._ledger.write_complete({"plan_hash": self.plan_hash, "finalized": finished,
                                         "blocks": self.spec.n_blocks})
        log.info("finalized %s", self.uri)

    def is_complete(self) -> bool:
        return self._ledger.read_complete() is not None


# zarr-python's LocalStore writes a chunk to ``<key minus its last suffix>.<uuid4 hex>.partial`` and
# renames it into place; a worker killed in between leaves that file behind.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def sweep_interrupted_writes(loc: StoreLocation) -> list[str]:
    """Remove the temporary files that zarr's local store leaves when a writer dies between writing a
    chunk and renaming it into place; returns their paths. Object storage writes a key whole or not at
    all, so there is nothing to sweep there. Call it only when no block is being written (finalize)."""
    if loc.remote or not os.path.isdir(loc.root):
        return []
    removed = []
    for folder, _dirs, files in os.walk(loc.root):
        for name in files:
            if _PARTIAL.search(name):
                path = os.path.join(folder, name)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                removed.append(path)
    return removed


def _consolidate(loc: StoreLocation, zarr_format: int) -> None:
    import zarr

    with warnings.catch_warnings():
        # zarr-python notes that v3 consolidated metadata is not in the v3 spec yet; xarray reads it.
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(loc.zarr_store(), zarr_format=zarr_format)  # type: ignore[arg-type]


def _clear_location(loc: StoreLocation, overwrite: bool) -> None:
    """Make ``loc`` free for a new store, or raise why it cannot be."""
    if loc.is_file():
        raise OutputExistsError(f"{loc.uri} is a file; choose a directory path for the store (e.g. scene.zarr)")
    names = loc.listing()
    if not names:
        return
    ledger = Ledger(loc)
    ours = ".geosr" in names
    zarrish = ours or any(n in _ZARR_MARKERS for n in names)
    if ours and ledger.read_plan() is None and ledger.creating():
        log.warning("replacing %s: its creation was interrupted", loc.uri)
        loc.remove_tree()
        return
    if not overwrite:
        raise OutputExistsError(
            f"{loc.uri} already exists; pass overwrite=True (--overwrite) to replace it, or rerun with the same "
            "input and parameters to resume it"
        )
    if not zarrish:
        shown = ", ".join(sorted(names)[:5])
        raise OutputError(
            f"refusing to overwrite {loc.uri}: it holds files that are not a Zarr store ({shown}); choose another "
            "output path or remove them yourself"
        )
    log.info("overwriting %s", loc.uri)
    loc.remove_tree()
    stac = StoreLocation(stac_item_uri(loc.uri), loc.env)
    if stac.exists():
        stac.remove("")
