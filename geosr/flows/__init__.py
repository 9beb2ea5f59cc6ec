"""Prefect flows of geosr: thin wiring over :mod:`geosr.orchestration` and :mod:`geosr.lifecycle` (see
docs/operators.md). Every flow takes the run configuration itself (``config``: a :class:`geosr.config.RunConfig`,
given as a mapping in ``prefect.yaml``), or the path or packaged name of a YAML file (``config_path``).

* :mod:`geosr.flows.scene` -- ``super-resolve-scene``: one scene URI -> one Zarr store + STAC item.
* :mod:`geosr.flows.new_scenes` -- ``process-new-scenes``: the scenes of a source with no complete output yet.
* :mod:`geosr.flows.backfill` -- ``geosr-backfill``: a date range / area / scene list, with a dry run.
* :mod:`geosr.flows.serve` -- all three served from one process (``geosr flows serve``).
"""
