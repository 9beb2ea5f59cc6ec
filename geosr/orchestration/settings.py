"""Run settings shared by every flow: where the blocks run and how scenes are guarded. A pydantic
model, so it is a typed, validated flow parameter (a nested mapping in ``prefect.yaml``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .cluster import ClusterSpec
from .jobs import LeaseOptions
from .scene import ClusterRunOptions

DEFAULT_GPU_LIMIT = "geosr-gpu"


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dask_address: str | None = Field(default=None, description="scheduler address (tcp://host:8786, a gateway "
                                     "or Coiled scheduler); empty: start an embedded cluster on this machine")
    cpu_workers: int = Field(default=1, ge=0, description="embedded cluster: reading workers")
    cpu_threads: int = Field(default=2, ge=1, description="embedded cluster: threads per reading worker")
    gpu_workers: int | None = Field(default=None, ge=1, description="embedded cluster: GPU-tagged workers "
                                    "(default: one per visible GPU, at least one)")
    dask_processes: bool = Field(default=True, description="embedded cluster: workers in their own processes")
    dask_dashboard: str | None = Field(default=None, description="embedded cluster: dashboard address, e.g. ':8787'")
    gpu_limit: str | None = Field(default=DEFAULT_GPU_LIMIT, description="Prefect global concurrency limit "
                                  "guarding the GPUs (strict: it must exist); empty: no limit")
    gpu_wait_s: float = Field(default=300.0, gt=0, description="how long to wait for a GPU worker to join")
    prefetch: int = Field(default=2, ge=0, description="blocks read ahead per GPU")
    lease_ttl_s: float = Field(default=120.0, gt=0, description="scene lease lifetime (renewed every ttl/3)")
    lease_wait_s: float = Field(default=6 * 3600.0, ge=0, description="how long a second run of a scene waits")
    max_concurrent_scenes: int = Field(default=2, ge=1, description="scenes in flight per flow run")
    quicklook: bool = Field(default=True, description="write a quicklook PNG beside each store")
    quicklook_url_map: str | None = Field(default=None, description="'s3://bucket/prefix=https://host/prefix': "
                                          "how a browser reaches the quicklooks (for the image artifact)")

    def cluster_spec(self) -> ClusterSpec:
        return ClusterSpec(address=self.dask_address or None, cpu_workers=self.cpu_workers,
                           cpu_threads=self.cpu_threads, gpu_workers=self.gpu_workers,
                           processes=self.dask_processes, dashboard_address=self.dask_dashboard or None)

    def lease(self) -> LeaseOptions:
        return LeaseOptions(ttl=self.lease_ttl_s, wait=self.lease_wait_s)

    def run_options(self) -> ClusterRunOptions:
        return ClusterRunOptions(prefetch=self.prefetch, gpu_wait_s=self.gpu_wait_s)
