"""One contract for every storage backend ``StorageEnv`` serves: a local directory and S3 (SeaweedFS).

The same tests run against both: write/read/list/delete/exists through ``StorageEnv.filesystem()``,
and rasterio (through ``open_source``) reads a GeoTIFF stored on either with identical pixels and meta.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from geosr.config import InputConfig
from geosr.io.source import open_source
from geosr.io.storage import StorageEnv
from tests.data.synthetic import make_geotiff

PAYLOAD = bytes(range(256)) * 64 + b"\x00end"


@dataclass(frozen=True)
class Backend:
    name: str
    env: StorageEnv
    root: str  # URI of an empty "directory" that belongs to this test

    def uri(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def fs(self):
        return self.env.filesystem(self.root)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        root = tmp_path / "store"
        root.mkdir()
        return Backend("local", StorageEnv(), str(root))
    bucket = request.getfixturevalue("s3_bucket")
    return Backend("s3", bucket.env, bucket.uri("store"))


def _names(listing) -> set[str]:
    return {str(p).rstrip("/").rsplit("/", 1)[-1] for p in listing}


def test_write_then_read_back(backend):
    fs, uri = backend.fs, backend.uri("a", "blob.bin")
    assert not fs.exists(uri)
    with fs.open(uri, "wb") as f:
        f.write(PAYLOAD)
    assert fs.exists(uri)
    assert fs.cat_file(uri) == PAYLOAD
    assert fs.info(uri)["size"] == len(PAYLOAD)
    with fs.open(uri, "rb") as f:
        f.seek(256)
        assert f.read(4) == bytes([0, 1, 2, 3])


def test_overwrite_replaces_content(backend):
    fs, uri = backend.fs, backend.uri("x.txt")
    fs.pipe_file(uri, b"first")
    fs.pipe_file(uri, b"second")
    assert fs.cat_file(uri) == b"second"


def test_list_files_and_subdirectories(backend):
    fs = backend.fs
    for name in ("one.bin", "two.bin", "sub/three.bin"):
        fs.pipe_file(backend.uri(*name.split("/")), b"x")
    assert _names(fs.ls(backend.root, detail=False)) == {"one.bin", "two.bin", "sub"}
    assert _names(fs.ls(backend.uri("sub"), detail=False)) == {"three.bin"}
    assert _names(fs.find(backend.root)) == {"one.bin", "two.bin", "three.bin"}


def test_delete_file_and_tree(backend):
    fs = backend.fs
    for name in ("keep.bin", "gone.bin", "tree/a.bin", "tree/b/c.bin"):
        fs.pipe_file(backend.uri(*name.split("/")), b"x")
    fs.rm(backend.uri("gone.bin"))
    assert not fs.exists(backend.uri("gone.bin")) and fs.exists(backend.uri("keep.bin"))
    fs.rm(backend.uri("tree"), recursive=True)
    fs.invalidate_cache()
    assert not fs.exists(backend.uri("tree", "a.bin")) and not fs.exists(backend.uri("tree", "b", "c.bin"))
    assert _names(fs.find(backend.root)) == {"keep.bin"}


def test_missing_path_is_file_not_found(backend):
    with pytest.raises(FileNotFoundError):
        backend.fs.cat_file(backend.uri("missing.bin"))


def test_open_source_reads_a_geotiff_written_through_the_filesystem(backend, tmp_path):
    ref = make_geotiff(tmp_path / "ref.tif", height=75, width=96, bands=3, nodata=0, nodata_layout="stripe",
                       band_descriptions=["red", "green", "nir"], blocksize=32, seed=5)
    uri = backend.uri("scenes", "scene.tif")
    backend.fs.put_file(str(ref), uri)
    src = open_source(uri, InputConfig(bands=("nir", "red")), backend.env)
    want = open_source(str(ref), InputConfig(bands=("nir", "red")), StorageEnv())
    assert src.meta.checksum.startswith("etag:" if backend.name == "s3" else "sha256:")
    for field in ("height", "width", "band_indexes", "band_names", "dtype", "crs_wkt", "transform", "nodata",
                  "scale_factor", "add_offset"):
        assert getattr(src.meta, field) == getattr(want.meta, field), field
    for rows, cols in (((0, 75), (0, 96)), ((30, 45), (17, 80))):
        got, exp = src.read(rows, cols), want.read(rows, cols)
        np.testing.assert_array_equal(got[0], exp[0])
        np.testing.assert_array_equal(got[1], exp[1])


@pytest.mark.s3
def test_local_and_s3_copies_of_one_file_are_identical_to_open_source(tmp_path, s3_bucket):
    path = make_geotiff(tmp_path / "s.tif", height=64, width=80, bands=4, dtype="int16", crs="EPSG:3857",
                        nodata=-1, nodata_layout="random", seed=9)
    uri = s3_bucket.uri("copies/s.tif")
    s3_bucket.env.filesystem(uri).put_file(str(path), uri)
    local = open_source(str(path), InputConfig(), StorageEnv())
    remote = open_source(uri, InputConfig(), s3_bucket.env)
    lm, rm = local.meta, remote.meta
    assert (lm.uri, rm.uri) == (str(path), uri)
    assert {**lm.__dict__, "uri": None, "checksum": None} == {**rm.__dict__, "uri": None, "checksum": None}
    np.testing.assert_array_equal(local.read((0, 64), (0, 80))[0], remote.read((0, 64), (0, 80))[0])
    np.testing.assert_array_equal(local.read((0, 64), (0, 80))[1], remote.read((0, 64), (0, 80))[1])
    assert Path(path).stat().st_size == s3_bucket.env.filesystem(uri).info(uri)["size"]
