"""Run settings shared by every flow: where the blocks run and how scenes are guarded. A pydantic model, so it
is a typed, validated flow parameter (a nested mapping in ``prefect.yaml``); its CLI flags are generated from
it (:mod:`geosr.commands._flags`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from ..config import flag
from ..store.lease import LeaseOptions
from .cluster import ClusterSpec

if TYPE_CHECKING:  # the CLI builds its flags from this model: importing it must not import Dask
    from .dask_executor import ClusterRunOptions

DEFAULT_GPU_LIMIT = "geosr-gpu"


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dask_address: str | None = Field(default=None, description="existing Dask scheduler (tcp://host:8786, a "
                                     "gateway or Coiled scheduler); default: an embedded cluster on this machine",
                                     json_schema_extra=flag("--dask-address"))
    cpu_workers: int = Field(default=1, ge=0, description="embedded cluster: reading workers",
                             json_schema_extra=flag("--cpu-workers"))
    cpu_threads: int = Field(default=2, ge=1, description="embedded cluster: threads per reading worker",
                             json_schema_extra=flag("--cpu-threads"))
    gpu_workers: int | None = Field(default=None, ge=1, description="embedded cluster: GPU-tagged workers "
                                    "(default: one per visible GPU, at least one)",
                                    json_schema_extra=flag("--gpu-workers"))
    dask_processes: bool = Field(default=True, description="embedded cluster: workers as threads of this process "
                                 "instead of separate processes (one GPU only)",
                                 json_schema_extra=flag("--dask-threads", negative=True))
    dask_dashboard: str | None = Field(default=None, description="embedded cluster: serve the Dask dashboard at "
                                       "this address, e.g. :8787 (127.0.0.1 unless a host is given)",
                                       json_schema_extra=flag("--dask-dashboard"))
    gpu_limit: str | None = Field(default=DEFAULT_GPU_LIMIT, description="Prefect global concurrency limit "
                                  "guarding the GPUs (strict: it must exist); '' for none (default: geosr-gpu with a "
                                  "Prefect server (PREFECT_API_URL) or for serve, none with a temporary server)",
                                  json_schema_extra=flag("--gpu-limit"))
    gpu_wait_s: float = Field(default=300.0, gt=0, description="how long to wait for a GPU worker to join")
    prefetch: int = Field(default=2, ge=0, description="blocks read ahead per GPU",
                          json_schema_extra=flag("--prefetch"))
    lease_ttl_s: float = Field(default=120.0, gt=0, description="scene lease lifetime in s (renewed every ttl/3)",
                               json_schema_extra=flag("--lease-ttl"))
    lease_wait_s: float = Field(default=6 * 3600.0, ge=0, description="how long a second run of a scene waits")
    max_concurrent_scenes: int = Field(default=2, ge=1, description="scenes in flight per flow run",
                                       json_schema_extra=flag("--max-concurrent-scenes"))
    quicklook: bool = Field(default=True, description="no quicklook PNG beside each store",
                            json_schema_extra=flag("--no-quicklook", negative=True))
    quicklook_url_map: str | None = Field(default=None, description="'s3://bucket/prefix=https://host/prefix': "
                                          "how a browser reaches the quicklooks (for the image artifact)",
                                          json_schema_extra=flag("--quicklook-url-map"))

    def cluster_spec(self) -> ClusterSpec:
        return ClusterSpec(address=self.dask_address or None, cpu_workers=self.cpu_workers,
                           cpu_threads=self.cpu_threads, gpu_workers=self.gpu_workers,
                           processes=self.dask_processes, dashboard_address=self.dask_dashboard or None)

    def lease(self, label: str = "") -> LeaseOptions:
        return LeaseOptions(ttl=self.lease_ttl_s, wait=self.lease_wait_s, label=label)

    def run_options(self) -> ClusterRunOptions:
        from .dask_executor import ClusterRunOptions

        return ClusterRunOptions(prefetch=self.prefetch, gpu_wait_s=self.gpu_wait_s)
