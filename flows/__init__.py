"""Prefect flows of geosr: thin wrappers over :mod:`geosr.orchestration` (see docs/operators.md).

* :mod:`flows.scene` — ``super-resolve-scene``: one scene URI -> one Zarr store + STAC item.
* :mod:`flows.new_scenes` — ``process-new-scenes``: the scenes of a source with no complete output yet.
* :mod:`flows.backfill` — ``geosr-backfill``: a date range / area / scene list, with a dry run.
* :mod:`flows.serve` — all three served from one process (``geosr flows serve``).
"""
