"""The store's ledger: small JSON files under ``<store>/.geosr/`` that make a run resumable.

``plan.json``      written last by ``create``: format, plan hash, output spec, block grid. Its presence is
                   what makes a directory a geosr store.
``creating.json``  written first by ``create`` and removed after ``plan.json``; a store that has it but
                   no plan is an interrupted creation, safe to replace.
``blocks/<key>.json``  one per block, written after all of the block's chunks (``mark_done``).
``complete.json``  written last of all by ``finalize``.

Each file is written whole (one PUT on object storage, temp file + rename on local disk), so a reader
sees a marker entirely or not at all. Zarr readers ignore the ``.geosr`` prefix.
"""

from __future__ import annotations

from typing import Any

from .backend import StoreLocation

LEDGER_DIR = ".geosr"
PLAN = f"{LEDGER_DIR}/plan.json"
CREATING = f"{LEDGER_DIR}/creating.json"
COMPLETE = f"{LEDGER_DIR}/complete.json"
BLOCKS = f"{LEDGER_DIR}/blocks"
STORE_FORMAT = "geosr-store/1"


class Ledger:
    def __init__(self, loc: StoreLocation) -> None:
        self.loc = loc

    # -- creation ----------------------------------------------------------------------------------
    def begin_create(self, doc: dict[str, Any]) -> None:
        self.loc.write_json(CREATING, doc)

    def creating(self) -> bool:
        return self.loc.read_json(CREATING) is not None

    def end_create(self) -> None:
        self.loc.remove(CREATING)

    def write_plan(self, doc: dict[str, Any]) -> None:
        self.loc.write_json(PLAN, {"format": STORE_FORMAT, **doc})

    def read_plan(self) -> dict[str, Any] | None:
        return self.loc.read_json(PLAN)

    # -- blocks ------------------------------------------------------------------------------------
    def mark_done(self, key: str, doc: dict[str, Any]) -> None:
        self.loc.write_json(f"{BLOCKS}/{key}.json", doc)

    def done(self) -> dict[str, dict[str, Any]]:
        """{block key: marker document} of every block marked done."""
        return self.loc.read_many_json(BLOCKS)

    def done_keys(self) -> set[str]:
        """Keys of the blocks marked done, from one listing (no marker is read)."""
        return {p.rsplit("/", 1)[-1][: -len(".json")] for p in self.loc.json_names(BLOCKS)}

    # -- completion --------------------------------------------------------------------------------
    def write_complete(self, doc: dict[str, Any]) -> None:
        self.loc.write_json(COMPLETE, doc)

    def read_complete(self) -> dict[str, Any] | None:
        return self.loc.read_json(COMPLETE)
