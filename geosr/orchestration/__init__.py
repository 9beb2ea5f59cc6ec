"""Orchestration: Prefect at the scene level, Dask at the block level (see docs/operators.md). The scene's lifecycle
itself is :func:`geosr.lifecycle.run_scene`, the same as ``geosr run``'s; this package holds what a cluster adds.

Modules (import what you need; nothing here imports Prefect or Dask eagerly):

* :mod:`.dask_executor` — :class:`~.dask_executor.DaskExecutor`: the blocks on a cluster (``read_task`` on CPU
  workers, ``model_task`` on GPU-tagged workers), bounded prefetch.
* :mod:`.model_cache` — the worker plugin that loads a model once per GPU worker, with its adaptive batch size.
* :mod:`.cluster` — embedded cluster (CPU workers + workers tagged ``GPU=1``, HTTP on 127.0.0.1) or an existing
  scheduler.
* :mod:`.jobs` — :class:`~.jobs.SceneJob` (name, output URI under a prefix, idempotency key).
* :mod:`.query` — :class:`~.query.SceneQuery` / :class:`~.query.SceneRef` and parsing of bbox and datetime filters.
* :mod:`.discovery` — scenes under a prefix (and from :mod:`.stac_source`: STAC API, ItemCollection); what is left.
* :mod:`.backfill` — the backfill plan (scenes, tiles, estimated GPU time) and its outcome.
* :mod:`.gpu_limit` — the GPU concurrency limit (a Prefect global concurrency limit).
* :mod:`.prefect_io`, :mod:`.artifacts` — run logger, progress and report artifacts, quicklooks.
* :mod:`.scene_task`, :mod:`.fan_out` — the per-scene task body; many scenes as tasks or deployment runs.
* :mod:`.errors`, :mod:`.settings` — typed errors, flow settings.
"""
