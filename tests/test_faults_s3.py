"""The S3 server restarted in the middle of a run, on a SeaweedFS of this test alone (the session's server
is never disturbed): ``geosr run`` writing to S3 rides out the outage (storage retries, about a minute per
operation) and leaves a store identical, object by object, to a clean run, and no lease beside it. (Were an
outage to outlast the retries, the run would stop with one clear error line and resume cleanly: checked before
the strict assertion.)"""

from __future__ import annotations

import pytest

from tests.test_faults_support import (  # noqa: F401 - scene and clean_store are fixtures
    SET,
    PrivateS3,
    assert_identical,
    clean_store,
    cli,
    in_thread,
    one_line_error,
    output_files,
    s3_output_files,
    scene,
    start_cli,
    wait_for,
)

KEY = "out/S2_T33_20240105.zarr"


@pytest.fixture
def s3():
    server = PrivateS3()
    yield server
    server.close()


def _s3_markers(client, bucket: str) -> int:
    return client.list_objects_v2(Bucket=bucket, Prefix=f"{KEY}/.geosr/blocks/").get("KeyCount", 0)


@pytest.mark.parametrize("down_s", [2.0, 4.0, 12.0])
def test_s3_server_restarted_mid_write(down_s, s3, scene, clean_store):
    client = s3.server.client()
    client.create_bucket(Bucket="geosr")
    out = f"s3://geosr/{KEY}"
    args = ["run", scene, out, *SET, "--endpoint-url", s3.endpoint_url, "--set", 'storage.region="us-east-1"',
            "--no-progress"]
    proc = start_cli(*args)
    wait_for(lambda: _s3_markers(client, "geosr") >= 3, "3 block markers on S3", proc=proc)

    def restart() -> None:
        import time

        s3.stop()
        time.sleep(down_s)
        s3.start()

    t, errors = in_thread(restart)
    stdout, stderr = proc.communicate(timeout=300)
    t.join(120)
    assert not errors, errors
    print(f"S3 down {down_s} s mid-write: geosr run exit code {proc.returncode}; {stderr.strip()[-300:]}")
    if proc.returncode != 0:  # the outage outlasted the retries: one clear line, then a clean resume
        line = one_line_error(stderr)
        assert out.split("/")[2] in line or "geosr" in line, line
        again = cli(*args)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.startswith("resumed:"), again.stdout
    if proc.returncode != 0:
        # geosr retries every storage operation for about a minute (geosr/retry.py), on the CLI as in the flows:
        # outages this short must be ridden out (issue 18: a ~4 s outage used to stop `geosr run`)
        pytest.fail(f"a {down_s} s outage was not ridden out by the retries; stderr: {stderr[-2000:]}")
    assert_identical(s3_output_files(client, "geosr", KEY), output_files(clean_store))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="geosr").get("Contents", [])]
    assert not [k for k in keys if "lease" in k or ".tmp-" in k], keys
