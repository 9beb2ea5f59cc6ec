"""``super-resolve-scene``: one scene URI -> one Zarr store (+ STAC item, quicklook, artifact).

Prefect works at the scene level (one task per scene); the blocks of the scene go to the Dask cluster
(``settings.dask_address``, or an embedded cluster on this machine). From a shell: ``geosr flows run-scene``.
"""


from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from geosr.config import RunConfig
from geosr.orchestration.cluster import cluster_address
from geosr.orchestration.jobs import scene_id_from_uri, scene_output_uri
from geosr.orchestration.prefect_io import resolve_config, run_logger
from geosr.orchestration.scene_task import process_scene
from geosr.orchestration.settings import RunSettings
from geosr.retry import retry_cluster_lost


@task(name="super-resolve", task_run_name="super-resolve-{scene_id}", retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5,
      retry_condition_fn=retry_cluster_lost, cache_policy=NO_CACHE)
def scene_task(input_uri: str, output_uri: str, config: RunConfig, settings: RunSettings, dask_address: str,
               overwrite: bool = False, scene_id: str = "", collection: str | None = None,
               acquired: str | None = None) -> dict[str, Any]:
    """One scene, coarse-grained: its blocks run on the Dask cluster, not as Prefect tasks. Retried only when the
    cluster was lost (storage failures were retried inside, :mod:`geosr.retry`)."""
    return process_scene(input_uri, output_uri, config, settings, dask_address=dask_address, overwrite=overwrite,
                         scene_id=scene_id, collection=collection, acquired=acquired)


@flow(name="super-resolve-scene")
def super_resolve_scene(input_uri: str, output_uri: str | None = None, output_prefix: str | None = None,
                        collection: str | None = None, config: RunConfig | None = None,
                        config_path: str | None = None, overwrite: bool = False,
                        settings: RunSettings | None = None, acquired: str | None = None) -> dict[str, Any]:
    """Super-resolve ``input_uri`` into ``output_uri`` (or ``<output_prefix>/<collection>/<scene>.zarr``) with
    ``config`` (else the YAML ``config_path``, else the defaults)."""
    settings = settings or RunSettings()
    cfg = resolve_config(config_path, config)
    scene_id = scene_id_from_uri(input_uri)
    if not output_uri:
        if not output_prefix:
            raise ValueError("give output_uri, or output_prefix (the store goes to <prefix>/<collection>/<scene>.zarr)")
        output_uri = scene_output_uri(output_prefix, collection, scene_id)
    run_logger().info("blocks run on %s", settings.cluster_spec().describe())
    with cluster_address(settings.cluster_spec()) as address:
        return scene_task(input_uri, output_uri, cfg, settings, address, overwrite, scene_id, collection, acquired)
