"""Credentials never leak: a run from S3 to S3 against the real SeaweedFS server with debug logging, its
``info`` and its errors (refused secret, missing bucket, unreachable endpoint) are searched for the secret
key, and so is every object the run wrote (chunks, attributes, consolidated metadata, ledger, STAC item)
and what Dask ships to workers (the pickled source, output and storage environment). The secret the
server accepts is the sentinel; a refused run uses a second, made-up sentinel."""

from __future__ import annotations

import json
import pickle

from geosr.config import load_config
from geosr.io.source import open_source
from geosr.store import ZarrOutput
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.test_faults_support import cli, one_line_error
from tests.test_orchestration_support import SMALL, make_scene

SET = [a for k, v in SMALL.items() for a in ("--set", f"{k}={json.dumps(v)}")]
REFUSED = "SENTINEL-refused-secret-7f3a9c1e5b"


def _clean(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, f"a secret appears in: ...{text[max(0, text.find(s) - 200):text.find(s) + 50]}..."


def test_secret_is_in_no_log_attribute_stac_item_or_pickle(s3_bucket, tmp_path):
    src = s3_bucket.upload(make_scene(tmp_path / "S2_T33_20240105.tif"), "in/S2_T33_20240105.tif")
    out = s3_bucket.uri("out/S2_T33_20240105.zarr")
    ep = ["--endpoint-url", s3_bucket.server.endpoint_url, "--set", 'storage.region="us-east-1"']
    r = cli("-v", "run", src, out, *SET, *ep, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DEBUG" in r.stderr, "debug logging was on"
    info = cli("-v", "info", out, *ep[:2])
    assert info.returncode == 0, info.stderr[-3000:]
    _clean(r.stdout + r.stderr + info.stdout + info.stderr, TEST_SECRET_KEY)
    keys = s3_bucket.keys()
    assert any(k.endswith("stac-item.json") for k in keys) and any(k.endswith(".zmetadata") for k in keys)
    for k in keys:
        body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=k)["Body"].read()
        assert TEST_SECRET_KEY.encode() not in body, f"the secret is in s3://{s3_bucket.name}/{k}"
    cfg = load_config(None, {**SMALL, "storage.endpoint_url": s3_bucket.server.endpoint_url,
                             "storage.region": "us-east-1"})
    shipped = pickle.dumps((open_source(src, cfg.input, s3_bucket.env), ZarrOutput.open(out, s3_bucket.env),
                            s3_bucket.env))
    assert TEST_SECRET_KEY.encode() not in shipped and TEST_ACCESS_KEY.encode() not in shipped


def test_secret_is_in_no_error(s3_bucket, tmp_path):
    src = s3_bucket.upload(make_scene(tmp_path / "a.tif"), "in/a.tif")
    ep = ["--endpoint-url", s3_bucket.server.endpoint_url, "--set", 'storage.region="us-east-1"']
    refused = cli("-v", "run", src, s3_bucket.uri("out/a.zarr"), *SET, *ep, "--no-progress",
                  env={"AWS_SECRET_ACCESS_KEY": REFUSED})
    assert refused.returncode != 0
    assert "credentials" in one_line_error(refused.stderr)
    no_bucket = cli("-v", "run", src, "s3://no-such-bucket-geosr/out/a.zarr", *SET, *ep, "--no-progress")
    assert no_bucket.returncode != 0 and "no-such-bucket-geosr" in one_line_error(no_bucket.stderr)
    # two tries instead of eight: the error is the same, a minute of backoff sooner (storage.retry_attempts)
    unreachable = cli("run", src, s3_bucket.uri("out/b.zarr"), *SET, "--endpoint-url", "http://127.0.0.1:9",
                      "--set", 'storage.region="us-east-1"', "--set", "storage.retry_attempts=2", "--no-progress",
                      timeout=240)
    assert unreachable.returncode != 0
    one_line_error(unreachable.stderr)
    for r in (refused, no_bucket, unreachable):
        _clean(r.stdout + r.stderr, TEST_SECRET_KEY, REFUSED)
