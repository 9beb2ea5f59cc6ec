"""Orchestration: Prefect at the scene level, Dask at the block level (see docs/operators.md).

Modules (import what you need; nothing here imports Prefect or Dask eagerly):

* :mod:`.cluster` — embedded cluster (CPU workers + workers tagged ``GPU=1``) or an existing scheduler.
* :mod:`.gpu` — the worker plugin that loads a model once per GPU worker; OOM-adaptive batching.
* :mod:`.blocks` — the tasks Dask runs: ``read_task`` (CPU), ``model_task`` (GPU: upsample, blend, write).
* :mod:`.scene` — :func:`~.scene.run_scene_distributed`: one scene over the cluster, bounded prefetch.
* :mod:`.lease` — the scene lease, on :mod:`.conditional` objects (S3 conditional writes / O_EXCL + lockf).
* :mod:`.jobs` — :class:`~.jobs.SceneJob` and :func:`~.jobs.run_scene_job` (lease + GPU slot + scene).
* :mod:`.query` — :class:`~.query.SceneQuery` / :class:`~.query.SceneRef` and parsing of bbox and datetime filters.
* :mod:`.discovery` — scenes under a prefix (and from :mod:`.stac_source`: STAC API, ItemCollection); what is left.
* :mod:`.backfill` — the backfill plan (scenes, tiles, estimated GPU time) and its outcome.
* :mod:`.gpu_limit` — the GPU concurrency limit (a Prefect global concurrency limit).
* :mod:`.prefect_io`, :mod:`.artifacts` — run logger, progress and report artifacts, quicklooks.
* :mod:`.scene_task`, :mod:`.fan_out` — the per-scene task body; many scenes as tasks or deployment runs.
* :mod:`.retry`, :mod:`.errors`, :mod:`.settings` — backoff, typed errors, flow settings.
"""
