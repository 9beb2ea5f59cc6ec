"""``geosr info STORE``: shape, CRS, resolution, bands, chunking, overviews, completeness, the readers
that open it (GDAL by version, xarray, rioxarray, odc-geo) and provenance of an output store (``--json``
for machine-readable output)."""

from __future__ import annotations

import argparse
from typing import Any

from ..jsonio import dumps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe an output Zarr store",
                       description="Describe a geosr output store: geometry, encoding, chunking, overview "
                                   "levels, completeness (done/total blocks) and provenance.")
    p.add_argument("store", metavar="STORE", help="output store: a local path or s3://bucket/key.zarr")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint URL (e.g. a MinIO/SeaweedFS server)")
    p.add_argument("--region", default=None, help="S3 region")
    p.add_argument("--profile", default=None, help="AWS profile for the credentials")
    p.add_argument("--anon", action="store_true", help="anonymous S3 access (public buckets)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import StorageConfig
    from ..io.storage import StorageEnv
    from ..store.describe import describe_store

    env = StorageEnv(StorageConfig(endpoint_url=args.endpoint_url, region=args.region, profile=args.profile,
                                   anon=args.anon))
    info = describe_store(args.store, env)
    if args.json:
        print(dumps(info, indent=2))
    else:
        print(format_info(info))
    return 0


def format_info(d: dict[str, Any]) -> str:
    bands, h, w = d["shape"]
    crs = d["crs"]["code"] or "(no EPSG code)"
    rx, ry = d["resolution"]
    xmin, ymin, xmax, ymax = d["bounds"]
    chunks = " x ".join(str(v) for v in d["chunks"])
    if d["shards"]:
        chunks += f" (shards {' x '.join(str(v) for v in d['shards'])})"
    blocks = d["blocks"]
    lines = [
        ("store", f"{d['uri']} (Zarr v{d['zarr_format']}, variable {d['variable']!r})"),
        ("state", f"{d['state']}: {blocks['done']}/{blocks['total']} blocks done"),
        ("shape", f"{bands} bands x {h} rows x {w} columns"),
        ("dtype", f"{d['dtype']} ({d['encoding']})"),
        ("crs", f"{crs} ({d['crs']['name']})"),
        ("resolution", f"{_num(rx)} x {_num(ry)} {d['crs'].get('units') or ''}".rstrip()),
        ("bounds", f"{_num(xmin)}, {_num(ymin)}, {_num(xmax)}, {_num(ymax)}"),
        ("bands", ", ".join(d["bands"])),
        ("chunks", f"{chunks}, {d['compressor']}"),
    ]
    unc = d.get("uncertainty")
    if unc:
        lines.append(("uncertainty", f"{unc['variable']!r}: per-pixel std over {unc['samples']} samples per tile, "
                                     "same encoding, level 0 only"))
    ovr = d["overviews"]
    if ovr:
        lines.append(("overviews", f"{len(ovr)} levels: " + ", ".join(
            f"{o['level']}: {o['shape'][0]} x {o['shape'][1]}" for o in ovr)))
    else:
        lines.append(("overviews", "none"))
    if d.get("readers"):
        lines.append(("readers", format_readers(d["readers"])))
    prov = d["provenance"]
    for key, label in (("input_uri", "input"), ("input_checksum", "checksum"), ("model", "model"),
                       ("model_version", "model version"), ("config_hash", "config hash"),
                       ("plan_hash", "plan hash"), ("geosr_version", "geosr"), ("start_time", "started"),
                       ("end_time", "finished")):
        if prov.get(key) is not None:
            lines.append((label, str(prov[key])))
    if d.get("stac_item"):
        lines.append(("stac item", d["stac_item"]))
    width = max(len(k) for k, _ in lines) + 1
    return "\n".join(f"{k + ':':<{width}} {v}" for k, v in lines)


def format_readers(readers: list[dict[str, Any]]) -> str:
    """One line: the readers that open the store on this machine, then those that cannot and what they need."""
    def name(r: dict[str, Any]) -> str:
        if not r.get("version"):
            return f"{r['name']} {r['needs']}".strip() if r["name"] == "GDAL" else r["name"]
        if r["reads"]:
            return f"{r['name']} {r['needs']} ({r['version']} here)"
        return f"{r['name']} {r['version']} here (needs {r['needs']})"

    yes = [name(r) for r in readers if r["reads"]]
    no = [name(r) for r in readers if not r["reads"]]
    return "can: " + ", ".join(yes) + (f"; cannot: {', '.join(no)}" if no else "") + " (--json for how)"


def _num(v: float) -> str:
    return f"{v:.10g}"
