"""Offline validation of infra/k8s: every manifest parses, core objects validate against the Kubernetes
schemas (kubernetes-validate, strict), the dask-kubernetes custom resources against the operator's CRD
schema (vendored) plus the strict core PodSpec/ServiceSpec, the Prefect work pool's base job template
renders to a valid Job, and every Secret/ConfigMap/ServiceAccount/config file the manifests name exists.
No cluster, no network."""

from __future__ import annotations

import copy
import json
import shlex
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

try:
    import kubernetes_validate as kv
except ImportError:  # the schema tests skip; parsing, references and the job template are still checked
    kv = None
jsonschema = pytest.importorskip("jsonschema")
from referencing import Registry, Resource  # noqa: E402  (jsonschema's dependency)

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
sys.path.insert(0, str(K8S))
from render import load_yaml_docs, render  # noqa: E402

# Oldest Kubernetes minor the manifests promise to work on, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kv.latest_version() if kv else "latest")
needs_kv = pytest.mark.skipif(kv is None, reason="pip install kubernetes-validate==1.37.0")
DASK_KUBERNETES_VERSION = "2026.3.0"
CRD_SCHEMAS = K8S / "schemas" / f"dask-kubernetes-{DASK_KUBERNETES_VERSION}"
KUSTOMIZATIONS = ["base", "overlays/gpu-8"]
NAMESPACE = "geosr"


def is_dask(obj: dict) -> bool:
    return obj["apiVersion"].startswith("kubernetes.dask.org/")


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / request.param)


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return [d for p in sorted((K8S / "examples").glob("*.yaml")) for d in load_yaml_docs(p)]


def strict_core_validator(version: str, definition: str):
    """A validator for one core definition (e.g. ``io.k8s.api.core.v1.PodSpec``), strict (no unknown fields)."""
    full = next(v for v in kv.utils.all_versions() if kv.utils.major_minor(v) == kv.utils.major_minor(version))
    base = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{full}-local-strict"
    defs = json.loads((base / "_definitions.json").read_text())
    registry = Registry().with_resource(defs["$id"], Resource.from_contents(defs))
    return jsonschema.Draft202012Validator({"$ref": f"{defs['$id']}#/$defs/{definition}"}, registry=registry)


def errors(validator, obj) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


# ------------------------------------------------------------------------------------------ parsing


def test_every_file_parses():
    files = [p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml", ".json")]
    assert len(files) >= 10
    for p in files:
        if p.suffix == ".json":
            json.loads(p.read_text())
        else:
            docs = load_yaml_docs(p)
            assert docs, f"{p} is empty"
            for d in docs:
                assert isinstance(d, dict) and (d.get("kind") or "resources" in d), f"{p}: not a Kubernetes object"


# ------------------------------------------------------------------------------------------ schemas


@needs_kv
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate_strict(rendered, examples, version):
    name, docs = rendered
    core = [d for d in docs + examples if not is_dask(d)]
    kinds = {d["kind"] for d in core}
    assert {"Namespace", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Secret"} <= kinds
    for d in core:
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{name}: {d['kind']}/{d['metadata']['name']} against {version}: "
                        f"{'.'.join(map(str, e.path))}: {e.message}")


@needs_kv
def test_strict_validation_catches_a_typo(rendered):
    _, docs = rendered
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[0], strict=True)


def test_dask_resources_validate_against_the_operator_crd(rendered):
    name, docs = rendered
    dask = [d for d in docs if is_dask(d)]
    assert {d["kind"] for d in dask} == {"DaskCluster", "DaskWorkerGroup"}
    for d in dask:
        assert d["apiVersion"] == "kubernetes.dask.org/v1"
        schema = json.loads((CRD_SCHEMAS / f"{d['kind'].lower()}-v1.json").read_text())
        errs = errors(jsonschema.Draft7Validator(schema), d)
        assert not errs, f"{name}: {d['kind']}/{d['metadata']['name']}: {errs}"


@needs_kv
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_dask_pod_templates_validate_strict(rendered, version):
    name, docs = rendered
    pod = strict_core_validator(version, "io.k8s.api.core.v1.PodSpec")
    svc = strict_core_validator(version, "io.k8s.api.core.v1.ServiceSpec")
    for d in (d for d in docs if is_dask(d)):
        specs = [("worker", d["spec"]["worker"]["spec"])]
        if d["kind"] == "DaskCluster":
            specs.append(("scheduler", d["spec"]["scheduler"]["spec"]))
            errs = errors(svc, d["spec"]["scheduler"]["service"])
            assert not errs, f"{name}: scheduler service: {errs}"
        for what, spec in specs:
            errs = errors(pod, spec)
            assert not errs, f"{name}: {d['kind']}/{d['metadata']['name']} {what} pod: {errs}"
    bad = copy.deepcopy(next(d for d in docs if d["kind"] == "DaskWorkerGroup"))["spec"]["worker"]["spec"]
    bad["nodeSelecter"] = {}
    assert errors(pod, bad), "strict PodSpec must reject a misspelt field"


# ------------------------------------------------------------------------------------------ content


def _container(podspec: dict, name: str | None = None) -> dict:
    cs = podspec["containers"]
    return cs[0] if name is None else next(c for c in cs if c["name"] == name)


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_gpu_and_cpu_worker_groups(rendered):
    name, docs = rendered
    cluster = next(d for d in docs if d["kind"] == "DaskCluster")
    gpu_groups = [d for d in docs if d["kind"] == "DaskWorkerGroup"]
    assert len(gpu_groups) == 1
    g = gpu_groups[0]
    assert g["spec"]["cluster"] == cluster["metadata"]["name"]
    pod = g["spec"]["worker"]["spec"]
    c = _container(pod)
    assert c["image"].split("/")[-1].startswith("geosr-gpu:"), c["image"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" == c["resources"]["requests"]["nvidia.com/gpu"]
    assert _flag(c["args"], "--resources") == "GPU=1"
    assert _flag(c["args"], "--nthreads") == "1"
    assert _flag(c["args"], "--name") == "$(DASK_WORKER_NAME)"
    assert pod["nodeSelector"], "GPU workers must be pinned to GPU nodes"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
    # CPU group: the cluster's own workers, no GPU resources, no GPU tag.
    cpod = cluster["spec"]["worker"]["spec"]
    cc = _container(cpod)
    assert cc["image"].split("/")[-1].startswith("geosr-cpu:")
    assert "nvidia.com/gpu" not in json.dumps(cpod)
    assert "--resources" not in cc["args"]
    # Scheduler reachable where the ConfigMap says flows should connect.
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "geosr-prefect")
    port = next(p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"] if p["name"] == "tcp-comm")
    assert cm["data"]["GEOSR_DASK_ADDRESS"] == (
        f"tcp://{cluster['metadata']['name']}-scheduler.{NAMESPACE}.svc.cluster.local:{port}")
    if name == "overlays/gpu-8":
        assert g["spec"]["worker"]["replicas"] == 8
        assert cluster["spec"]["worker"]["replicas"] == 16


def _refs(obj, kind_key: str):
    """Non-optional names under ``secretRef``/``secretKeyRef``/``configMapRef``/... anywhere in obj."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == kind_key and isinstance(v, dict) and not v.get("optional"):
                yield v["name"]
            elif k == "volumes" and isinstance(v, list) and kind_key == "configMapRef":
                for vol in v:
                    if "configMap" in vol and not vol["configMap"].get("optional"):
                        yield vol["configMap"]["name"]
            yield from _refs(v, kind_key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _refs(v, kind_key)


def test_references_resolve(rendered, examples):
    name, docs = rendered
    all_docs = docs + examples
    names = lambda kind: {d["metadata"]["name"] for d in all_docs if d["kind"] == kind}  # noqa: E731
    template = json.loads((K8S / "base" / "base-job-template.json").read_text())
    for ref in list(_refs(docs, "secretRef")) + list(_refs(docs, "secretKeyRef")):
        assert ref in names("Secret"), f"{name}: Secret {ref} is referenced but has no example in infra/k8s/examples"
    assert template["variables"]["properties"]["s3_secret_name"]["default"] in names("Secret")
    for ref in list(_refs(docs, "configMapRef")) + list(_refs(docs, "configMapKeyRef")):
        assert ref in names("ConfigMap"), f"{name}: ConfigMap {ref} is referenced but not defined"
    sas = names("ServiceAccount")
    for d in docs:
        if d["kind"] == "Deployment":
            assert d["spec"]["template"]["spec"]["serviceAccountName"] in sas
        if d["kind"] == "RoleBinding":
            assert d["roleRef"]["name"] in names("Role")
            assert all(s["name"] in sas for s in d["subjects"])
        assert d.get("kind") == "Namespace" or d["metadata"].get("namespace") == NAMESPACE
    assert template["variables"]["properties"]["service_account_name"]["default"] in sas
    # Images: every geosr image went through the kustomize image map (no bare local names left).
    images = [c["image"] for c in _all_containers(docs)]
    assert images and all("/" in i and ":" in i for i in images), images
    # The Prefect worker loads the base job template shipped next to it.
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "geosr-prefect-work-pool")
    assert json.loads(cm["data"]["base-job-template.json"]) == template


def _all_containers(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                yield from v
            else:
                yield from _all_containers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_containers(v)


def test_referenced_repo_files_exist():
    """Paths the manifests and images name inside the image (/opt/geosr/configs/X) exist in the repo, and the
    Dockerfiles copy those directories."""
    texts = "\n".join(p.read_text() for p in K8S.rglob("*") if p.suffix in (".yaml", ".json"))
    import re

    for rel in set(re.findall(r"/opt/geosr/configs/([\w.-]+\.ya?ml)", texts)):
        assert (ROOT / "geosr" / "configs" / rel).is_file(), f"manifests reference configs/{rel}, which does not exist"
    for df in ("cpu.Dockerfile", "gpu.Dockerfile"):
        assert "COPY geosr/configs /opt/geosr/configs" in (ROOT / "infra" / "docker" / df).read_text()
    for p in K8S.rglob("kustomization.yaml"):
        k = yaml.safe_load(p.read_text())
        for res in k.get("resources", []):
            assert (p.parent / res).exists(), f"{p}: resource {res} does not exist"
        for gen in k.get("configMapGenerator", []):
            for f in gen.get("files", []):
                assert (p.parent / f.rpartition("=")[2]).is_file(), f"{p}: {f} does not exist"


# ------------------------------------------------------------------------------------------ Prefect


def _render_job(job_variables: dict | None = None) -> dict:
    """What the Kubernetes worker submits for a flow run: the base job template with the variables' defaults
    (and a deployment's job_variables) applied, env/command filled in as prefect-kubernetes does."""
    from prefect.utilities.templating import apply_values

    tpl = json.loads((K8S / "base" / "base-job-template.json").read_text())
    values = {k: v["default"] for k, v in tpl["variables"]["properties"].items() if "default" in v}
    values.update({"name": "geosr-flow-run", "command": "prefect flow-run execute", "labels": {"a": "b"},
                   "env": {"PREFECT__FLOW_RUN_ID": "x"}})
    values.update(job_variables or {})
    cfg = apply_values(tpl["job_configuration"], values)
    job = cfg["job_manifest"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    c["env"] = [{"name": k, "value": v} for k, v in c["env"].items()]
    c["args"] = shlex.split(c["args"])

    def drop_none(o):
        if isinstance(o, dict):
            return {k: drop_none(v) for k, v in o.items() if v is not None}
        if isinstance(o, list):
            return [drop_none(v) for v in o]
        return o

    job = drop_none(job)
    # prefect-kubernetes insists on parallelism/completions under spec.template.spec (where its default template
    # has them; see _get_base_job_manifest); they are Job fields, so the API server drops them from the pod
    # spec with a warning. Strip them here, after checking they are there, so the rest is validated strictly.
    pod = job["spec"]["template"]["spec"]
    assert pod.pop("parallelism") == 1 and pod.pop("completions") == 1
    return job


def test_base_job_template_placeholders_are_declared():
    from prefect.utilities.templating import find_placeholders

    tpl = json.loads((K8S / "base" / "base-job-template.json").read_text())
    used = {p.name for p in find_placeholders(tpl["job_configuration"])}
    declared = set(tpl["variables"]["properties"])
    assert used <= declared, f"undeclared template variables: {used - declared}"
    jsonschema.Draft202012Validator.check_schema(tpl["variables"])


@needs_kv
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_base_job_template_renders_a_valid_gpu_job(version):
    job = _render_job()
    kv.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["name"] == "prefect-job" and pod["restartPolicy"] == "Never"  # what prefect-kubernetes requires
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 == c["resources"]["requests"]["nvidia.com/gpu"]
    assert pod["nodeSelector"] and pod["tolerations"]
    assert {"secretRef": {"name": "geosr-s3"}} in c["envFrom"]
    assert job["spec"]["backoffLimit"] == 0
    # A deployment that uses the shared Dask cluster's GPU workers asks for no GPU itself.
    cpu_job = _render_job({"gpu_count": 0, "node_selector": {}, "tolerations": [],
                           "image": "registry.example.com/geosr/geosr-cpu:0.1.0"})
    kv.validate(cpu_job, version, strict=True)
    assert cpu_job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 0


def test_base_job_template_satisfies_prefect_kubernetes_minimum():
    """prefect-kubernetes refuses a job manifest that lacks (or changes) any of these fields."""
    import jsonpatch

    required = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"annotations": {}, "labels": {}},
                "spec": {"template": {"spec": {"parallelism": 1, "completions": 1, "restartPolicy": "Never",
                                               "containers": [{"name": "prefect-job"}]}}}}
    job = _render_job()
    job["spec"]["template"]["spec"].update(parallelism=1, completions=1)  # checked and stripped by _render_job
    patch = jsonpatch.JsonPatch.from_diff(job, required)
    bad = [op for op in patch if op["op"] in ("add", "replace")]
    assert not bad, bad
