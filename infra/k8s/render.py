"""Render a kustomization under infra/k8s offline, without kubectl: the small subset of kustomize these
manifests use (``resources``, ``namespace``, ``images``, ``configMapGenerator`` with ``files`` and no
hash suffix, inline JSON6902 ``patches`` with a ``target``). The tests use it to validate exactly what
``kubectl apply -k`` would send; for real deployments use ``kubectl kustomize`` / ``kubectl apply -k``.

    python infra/k8s/render.py infra/k8s/overlays/gpu-8 > rendered.yaml
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume"}


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    checks = {"group": group, "version": version, "kind": obj.get("kind"),
              "name": obj.get("metadata", {}).get("name"), "namespace": obj.get("metadata", {}).get("namespace")}
    return all(checks[k] == v for k, v in target.items() if k in checks)


def _set_images(obj: Any, images: list[dict]) -> None:
    if isinstance(obj, dict):
        for key in ("containers", "initContainers"):
            for c in obj.get(key, []) or []:
                if isinstance(c, dict) and isinstance(c.get("image"), str):
                    name, _, tag = c["image"].partition(":")
                    for img in images:
                        if img["name"] == name:
                            c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag or 'latest')}"
        for v in obj.values():
            _set_images(v, images)
    elif isinstance(obj, list):
        for v in obj:
            _set_images(v, images)


def render(kdir: str | Path) -> list[dict[str, Any]]:
    kdir = Path(kdir)
    kfile = kdir / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    unsupported = set(k) - {"apiVersion", "kind", "namespace", "resources", "images", "configMapGenerator",
                            "generatorOptions", "patches"}
    if unsupported:
        raise ValueError(f"{kfile}: render.py does not support {sorted(unsupported)}; use kubectl kustomize")
    out: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        p = kdir / res
        out += render(p) if p.is_dir() else load_yaml_docs(p)
    if k.get("configMapGenerator") and not (k.get("generatorOptions") or {}).get("disableNameSuffixHash"):
        raise ValueError(f"{kfile}: only configMapGenerator with disableNameSuffixHash: true is supported")
    for gen in k.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            key, _, fname = f.rpartition("=") if "=" in f else ("", "", f)
            data[key or Path(fname).name] = (kdir / fname).read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    out = copy.deepcopy(out)
    if k.get("namespace"):
        for obj in out:
            if obj.get("kind") not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
        for obj in out:  # RoleBinding subjects follow the namespace, as kustomize does
            for s in obj.get("subjects", []) or []:
                if s.get("kind") == "ServiceAccount":
                    s["namespace"] = k["namespace"]
    if k.get("images"):
        _set_images(out, k["images"])
    for patch in k.get("patches", []):
        ops = yaml.safe_load(patch["patch"])
        if not isinstance(ops, list):
            raise ValueError(f"{kfile}: only JSON6902 (list of ops) patches are supported")
        hits = [i for i, obj in enumerate(out) if _matches(obj, patch.get("target", {}))]
        if not hits:
            raise ValueError(f"{kfile}: patch target {patch.get('target')} matches nothing")
        for i in hits:
            out[i] = jsonpatch.apply_patch(out[i], ops)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(argv[0]), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
