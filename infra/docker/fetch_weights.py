"""Fetch a model checkpoint directory from object storage into a local cache, once, atomically.

    python fetch_weights.py s3://bucket/models/ldsr-s2 /var/lib/geosr/weights
    -> /var/lib/geosr/weights/ldsr-s2   (printed on stdout)

* The source is a directory (``s3://``, ``gs://``, ``file://`` or a local path) holding the checkpoint
  files (``config.json``, ``*.safetensors``, ...). Credentials and endpoint come from the standard AWS
  variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``); nothing is logged.
* If the source has a ``SHA256SUMS`` file (``sha256sum`` format), every file is checked against it and a
  mismatch is an error (exit 3); the partial download is removed.
* Files are downloaded into a temporary sibling directory and renamed into place, so a crash never leaves
  a half-written checkpoint where the model loader looks. A destination that is already complete (its
  ``.geosr-fetch.json`` lists the same files with the same sizes/ETags) is left alone: restarts are cheap.

Exit codes: 0 ok, 2 usage / source missing or empty, 3 checksum mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import fsspec

MARKER = ".geosr-fetch.json"


def _filesystem(uri: str):
    if uri.startswith(("s3://", "s3a://")):
        kw = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kw["endpoint_url"] = endpoint
        return fsspec.filesystem("s3", **kw), uri.split("://", 1)[1]
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _listing(fs, root: str) -> dict[str, dict]:
    root = root.rstrip("/")
    out = {}
    for path, info in fs.find(root, detail=True).items():
        if info.get("type") == "directory":
            continue
        rel = path[len(root):].lstrip("/")
        out[rel] = {"size": int(info.get("size") or 0), "etag": str(info.get("ETag") or info.get("etag") or "")}
    return out


def fetch(uri: str, dest_root: str | os.PathLike) -> Path:
    fs, root = _filesystem(uri)
    if not fs.exists(root):
        raise FileNotFoundError(f"weights source {uri} does not exist")
    listing = _listing(fs, root)
    if not listing:
        raise FileNotFoundError(f"weights source {uri} holds no files")
    name = Path(root.rstrip("/")).name
    dest_root = Path(dest_root)
    dest = dest_root / name
    manifest = {"source": uri, "files": listing}
    marker = dest / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text())["files"] == listing:
                return dest
        except (ValueError, KeyError):
            pass
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=dest_root))
    try:
        for rel in sorted(listing):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root.rstrip('/')}/{rel}", str(target))
        sums = tmp / "SHA256SUMS"
        if sums.is_file():
            for line in sums.read_text().splitlines():
                if not line.strip():
                    continue
                digest, rel = line.split(maxsplit=1)
                rel = rel.lstrip("*").strip()
                got = _sha256(tmp / rel) if (tmp / rel).is_file() else "missing"
                if got != digest.lower():
                    raise ValueError(f"checksum mismatch for {rel}: expected {digest}, got {got}")
        (tmp / MARKER).write_text(json.dumps(manifest, sort_keys=True, indent=1))
        if dest.exists():
            old = dest_root / f".{name}.old-{os.getpid()}"
            dest.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    uri = argv[0] if argv else os.environ.get("GEOSR_WEIGHTS_URI", "")
    dest = argv[1] if len(argv) > 1 else os.environ.get("GEOSR_WEIGHTS_DIR", "/var/lib/geosr/weights")
    if not uri:
        print("usage: fetch_weights.py SOURCE_URI [DEST_DIR]  (or set GEOSR_WEIGHTS_URI)", file=sys.stderr)
        return 2
    try:
        path = fetch(uri, dest)
    except FileNotFoundError as e:
        print(f"fetch_weights: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"fetch_weights: {e}", file=sys.stderr)
        return 3
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
