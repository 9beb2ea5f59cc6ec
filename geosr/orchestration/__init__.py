"""Orchestration: Prefect at the scene level, Dask at the block level (see docs/operators.md).

Modules (import what you need; nothing here imports Prefect or Dask eagerly):

* :mod:`.cluster` — embedded cluster (CPU workers + workers tagged ``GPU=1``) or an existing scheduler.
* :mod:`.gpu` — the worker plugin that loads a model once per GPU worker; OOM-adaptive batching.
* :mod:`.blocks` — the tasks Dask runs: ``read_task`` (CPU), ``model_task`` (GPU: upsample, blend, write).
* :mod:`.scene` — :func:`~.scene.run_scene_distributed`: one scene over the cluster, bounded prefetch.
* :mod:`.lease` — the scene lease (conditional writes on S3 / O_EXCL + flock locally).
* :mod:`.jobs` — :class:`~.jobs.SceneJob` and :func:`~.jobs.run_scene_job` (lease + GPU slot + scene).
* :mod:`.discovery` — scenes from a prefix, a STAC API or a static ItemCollection; what is left to do.
* :mod:`.backfill` — the backfill plan (scenes, tiles, estimated GPU time) and its outcome.
* :mod:`.artifacts`, :mod:`.prefect_io` — reports, quicklooks, the GPU concurrency limit, the scene task body.
* :mod:`.retry`, :mod:`.errors`, :mod:`.settings` — backoff, typed errors, flow settings.
"""
