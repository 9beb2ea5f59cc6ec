"""``store_status``: is there a store at a URI, for which plan, and how far along is it?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..io.storage import StorageEnv
from .backend import StoreLocation
from .ledger import Ledger
from .spec import OutputSpec

State = Literal["absent", "incomplete", "complete"]


@dataclass(frozen=True)
class StoreStatus:
    """``absent``: no geosr store (nothing there, or an interrupted creation); ``incomplete``: created
    for ``plan_hash``, ``done`` of ``total`` blocks written; ``complete``: finalized. ``made_from``: what the
    store was made from (:meth:`geosr.plan.ScenePlan.record`; None for stores older than that record)."""

    state: State
    plan_hash: str | None
    done: int
    total: int
    made_from: dict[str, Any] | None = None


def store_status(uri: str, env: StorageEnv) -> StoreStatus:
    """The state of the store at ``uri``. Raises the typed storage errors (missing bucket, refused
    credentials) rather than reporting such a store as absent."""
    loc = StoreLocation(uri, env)
    loc.check_bucket()
    ledger = Ledger(loc)
    plan = ledger.read_plan()
    if plan is None:
        return StoreStatus("absent", None, 0, 0)
    spec = OutputSpec.from_dict(plan["spec"])
    done = len(ledger.done_keys() & spec.block_keys)
    state: State = "complete" if ledger.read_complete() is not None else "incomplete"
    return StoreStatus(state, plan.get("plan_hash"), done, spec.n_blocks, plan.get("made_from"))
