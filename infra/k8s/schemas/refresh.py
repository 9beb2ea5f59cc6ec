"""Re-vendor the dask-kubernetes operator's CRD schemas (kubernetes.dask.org/v1) for offline validation.

    .venv/bin/python infra/k8s/schemas/refresh.py 2026.3.0

Downloads the dask-kubernetes wheel of that version from PyPI (pip, no dependencies, nothing installed),
reads the fully resolved CRDs it ships (the Helm chart's crds/*.yaml) and writes each version's
openAPIV3Schema as JSON to infra/k8s/schemas/dask-kubernetes-<version>/<kind>.json. Update
DASK_KUBERNETES_VERSION in tests/test_infra_k8s.py to the new directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRDS = "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/"
KINDS = ("daskcluster", "daskworkergroup", "daskautoscaler")  # what infra/k8s uses (not DaskJob)


def main(version: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "-d", tmp, f"dask-kubernetes=={version}"], check=True)
        wheel = next(Path(tmp).glob("dask_kubernetes-*.whl"))
        out = HERE / f"dask-kubernetes-{version}"
        out.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for name in sorted(n for n in z.namelist() if n.startswith(CRDS) and Path(n).stem in KINDS):
                crd = yaml.safe_load(z.read(name))
                for v in crd["spec"]["versions"]:
                    schema = {
                        "$comment": f"{crd['spec']['group']}/{v['name']} {crd['spec']['names']['kind']}: openAPIV3Schema "
                                    f"from dask-kubernetes {version} ({name}), BSD-3-Clause, Dask developers",
                        **v["schema"]["openAPIV3Schema"],
                    }
                    target = out / f"{crd['spec']['names']['kind'].lower()}-{v['name']}.json"
                    target.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
                    print(f"wrote {target.relative_to(HERE.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "2026.3.0"))
