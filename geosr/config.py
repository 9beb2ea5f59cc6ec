"""Typed, frozen run configuration, loaded from YAML and overridable by dotted keys -- the one config style of
geosr: pydantic models, validated at load.

``load_config(path, overrides)`` is the one entry point; every error it raises is a
:class:`~geosr.errors.ConfigError` naming the bad field and what it accepts. ``model`` is a union keyed on the
model's name: the classic kernels take no params, ``ldm`` takes :class:`geosr.model_params.LdmParams`, a
plugin model any mapping (its factory checks it). Fields with ``json_schema_extra={"flag": ...}`` get a
dedicated CLI flag (:mod:`geosr.commands._flags`); every field can be set with ``--set section.key=value``.
The packaged configurations (``geosr/configs/*.yaml``) are found by name: ``--config sentinel2-l2a``.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .model_params import ClassicParams, LdmParams

CLASSIC = ("nearest", "bilinear", "bicubic", "lanczos")


def flag(name: str, **extra: Any) -> dict[str, Any]:
    """``json_schema_extra`` of a field that has its own CLI flag (``--scale`` for ``tiling.scale``)."""
    return {"flag": name, **extra}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_ENDPOINT = re.compile(r"^https?://[^/@\s]+(/[^@\s]*)?$")


class StorageConfig(_Frozen):
    """Object-storage endpoint. Credentials are never here: they come from the standard AWS environment
    variables, shared credentials file or profile, exactly as boto/GDAL find them."""

    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (http(s)://host:port)",
                                     json_schema_extra=flag("--endpoint-url"))
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    retry_attempts: int = Field(default=8, ge=1, le=30,
                                description="tries of every storage operation before a run gives up (backoff from "
                                            "0.5 s, doubling, capped at 30 s: 8 rides out about a minute of outage)")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "@" in v:
            raise ValueError("an endpoint URL must not hold credentials (user:pass@); give them in "
                             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
        if not _ENDPOINT.match(v):
            raise ValueError("expected http://host:port or https://host")
        return v


class StacInputConfig(_Frozen):
    """How a STAC Item input (one COG per band, e.g. Sentinel-2 L2A) is stacked; see :mod:`geosr.io.stac_item`."""

    resampling: Literal["none", "nearest", "bilinear", "cubic", "average"] = Field(
        default="none", description="how bands coarser than the finest named one (20 m next to 10 m) are resampled "
        "onto its grid; none: refuse such bands")
    scl_mask: bool = Field(default=False, description="treat pixels whose Sentinel-2 scene classification (SCL) is "
                           "in scl_classes as nodata")
    scl_classes: tuple[int, ...] = Field(default=(0, 1, 3, 8, 9, 10), description="SCL classes masked: no data, "
                                         "saturated/defective, cloud shadow, cloud medium/high probability, cirrus")


class InputConfig(_Frozen):
    bands: tuple[int | str, ...] | None = Field(
        default=None, description="1-based band indices or band descriptions (band names or asset keys of a STAC "
        "Item input), e.g. 3,2,1,4 or red,green,blue,nir; default: all bands (a STAC Item: B04, B03, B02, B08)",
        json_schema_extra=flag("--bands", list=True))
    preset: Literal["none", "sentinel2-l2a"] = Field(default="none", description="radiometric preset",
                                                     json_schema_extra=flag("--preset"))
    scale_factor: float | None = Field(default=None, description="reflectance = DN * scale_factor + add_offset")
    add_offset: float | None = None
    processing_baseline: str | None = Field(
        default=None, description="Sentinel-2 processing baseline, e.g. '05.10'; read from the file's tags if absent"
    )
    nodata: float | None = Field(default=None, description="override the file's nodata value")
    stac: StacInputConfig = StacInputConfig()

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: tuple[int | str, ...] | None) -> tuple[int | str, ...] | None:
        if v is None:
            return v
        if len(v) == 0:
            raise ValueError("give at least one band, or leave it unset for all bands")
        for b in v:
            if isinstance(b, int) and b < 1:
                raise ValueError(f"band {b}: band indices are 1-based")
        return v


class TilingConfig(_Frozen):
    scale: int = Field(default=4, ge=1, le=16, description="upscaling factor", json_schema_extra=flag("--scale"))
    tile: int = Field(default=128, ge=8, le=4096, description="low-res tile size in pixels",
                      json_schema_extra=flag("--tile"))
    overlap: int = Field(default=16, ge=0, description="low-res overlap between neighbouring tiles",
                         json_schema_extra=flag("--overlap"))
    ramp: Literal["cosine", "linear", "uniform"] = "cosine"
    chunk: int = Field(default=1024, ge=64, description="output Zarr chunk size (output pixels)",
                       json_schema_extra=flag("--chunk"))
    block: int = Field(default=4096, ge=64, description="output block size (output pixels); a multiple of chunk",
                       json_schema_extra=flag("--block"))

    @model_validator(mode="after")
    def _check(self) -> TilingConfig:
        if self.overlap >= self.tile:
            raise ValueError(f"overlap={self.overlap} must be smaller than tile={self.tile}")
        if 2 * self.overlap > self.tile:
            raise ValueError(
                f"overlap={self.overlap} is more than half of tile={self.tile}: every pixel would be computed "
                "three or more times; use overlap <= tile/2"
            )
        if self.block % self.chunk:
            raise ValueError(f"block={self.block} must be a multiple of chunk={self.chunk}")
        if self.chunk % self.scale:
            raise ValueError(
                f"chunk={self.chunk} must be a multiple of scale={self.scale} so that every output chunk "
                "covers whole low-res pixels"
            )
        return self


# -- the model: a union keyed on its name -------------------------------------------------------------------------
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


class _ModelBase(_Frozen):
    batch_size: int = Field(default=16, ge=1, le=4096, description="tiles per model call",
                            json_schema_extra=flag("--batch-size"))
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N", json_schema_extra=flag("--device"))
    seed: int = Field(default=0, ge=0, lt=2**63, description="model seed", json_schema_extra=flag("--seed"))

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError("use auto, cpu, cuda or cuda:N")
        return v

    def params_dict(self) -> dict[str, Any]:
        """``params`` as the registry factory's keywords (unset options left out)."""
        params: Any = getattr(self, "params")
        return dict(params.model_dump(mode="json")) if isinstance(params, BaseModel) else dict(params)


class ClassicModel(_ModelBase):
    name: Literal["nearest", "bilinear", "bicubic", "lanczos"]
    params: ClassicParams = ClassicParams()


class LdmModel(_ModelBase):
    name: Literal["ldm"] = "ldm"
    params: LdmParams = LdmParams()


class PluginModel(_ModelBase):
    """A model registered under the ``geosr.upsamplers`` entry point (or :func:`geosr.upsamplers.register`);
    its factory validates ``params``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


def _model_kind(v: Any) -> str:
    name = v.get("name", "ldm") if isinstance(v, dict) else getattr(v, "name", "ldm")
    return "classic" if name in CLASSIC else "ldm" if name == "ldm" else "plugin"


ModelConfig = Annotated[
    Union[Annotated[ClassicModel, Tag("classic")], Annotated[LdmModel, Tag("ldm")],
          Annotated[PluginModel, Tag("plugin")]],
    Discriminator(_model_kind),
]


# -- output -----------------------------------------------------------------------------------------------------
class OutputLayout(_Frozen):
    """What fixes an output store's layout and encoding: shared by :class:`OutputConfig` (what a user sets) and
    :class:`geosr.store.OutputSpec` (the layout of one store), so both validate and default alike."""

    dtype: Literal["uint16", "float32"] = Field(
        default="uint16", description="uint16: reflectance x 10000, nodata 0; float32: NaN nodata",
        json_schema_extra=flag("--dtype"))
    zarr_format: Literal[2, 3] = Field(default=2, description="output Zarr format",
                                       json_schema_extra=flag("--zarr-format"))
    shard: int | None = Field(default=None, description="zarr v3 shard size in output pixels (a multiple of chunk)")
    compressor: Literal["zstd", "blosc", "none"] = Field(
        default="blosc", description="blosc = Blosc(zstd, byte shuffle): on uint16 reflectance ~2.7x faster than "
        "plain zstd-3 at a better ratio; GDAL's Zarr driver reads both")
    level: int = Field(default=1, description="compression level, 0..22")
    overviews: int | None = Field(default=None, ge=0, description="number of 2x overview levels; default: until < 256 px")
    variable: str = "reflectance"
    uncertainty_samples: int = Field(
        default=0, ge=0, le=256,
        description="0 = off; N >= 2 draws N samples per tile (a stochastic model, e.g. ldm), writes their mean "
        "as <variable> and the per-pixel standard deviation as <variable>_std (level 0 only); N times the model cost")

    @field_validator("level")
    @classmethod
    def _level(cls, v: int) -> int:
        if not 0 <= v <= 22:
            raise ValueError(f"level={v}: compression level must be within 0..22")
        return v

    @field_validator("uncertainty_samples")
    @classmethod
    def _samples(cls, v: int) -> int:
        if v == 1:
            raise ValueError("one sample has no spread: use 0 (off) or at least 2 samples per tile")
        return v

    @model_validator(mode="after")
    def _check_shard(self) -> OutputLayout:
        if self.shard is not None and self.zarr_format != 3:
            raise ValueError("shard needs zarr_format 3 (set zarr_format: 3, or drop shard: Zarr v2 has no sharding)")
        return self


class OutputConfig(OutputLayout):
    stac: bool = True
    max_size_gb: float = Field(
        default=1000.0, ge=0, description="refuse a scene whose output would exceed this many GB uncompressed "
        "(every band, overview and variable); 0: no limit")


class RunConfig(_Frozen):
    input: InputConfig = InputConfig()
    tiling: TilingConfig = TilingConfig()
    model: ModelConfig = Field(default_factory=LdmModel, json_schema_extra=flag("--model"))
    output: OutputConfig = OutputConfig()
    storage: StorageConfig = StorageConfig()
    workers: int = Field(default=0, ge=0, description="blocks processed at once on this machine; 0 = CPU count",
                         json_schema_extra=flag("--workers"))

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.output.shard is not None and self.output.shard % self.tiling.chunk:
            raise ValueError(f"output.shard={self.output.shard} must be a multiple of tiling.chunk={self.tiling.chunk}")
        if self.output.shard is not None and self.tiling.block % self.output.shard:
            raise ValueError(f"tiling.block={self.tiling.block} must be a multiple of output.shard={self.output.shard}")
        return self

    def config_hash(self) -> str:
        """Hash of everything that changes the output's bytes (not workers, storage, device, batch size or limits)."""
        d = self.model_dump(mode="json", exclude={"workers": True, "storage": True, "model": {"device", "batch_size"},
                                                  "output": {"max_size_gb"}})
        if d["input"]["stac"] == StacInputConfig().model_dump(mode="json"):
            del d["input"]["stac"]  # likewise for the STAC Item options at their defaults
        if not d["output"]["uncertainty_samples"]:
            # off (the default) leaves the hash of every configuration written before the option existed as it was
            del d["output"]["uncertainty_samples"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# -- loading ----------------------------------------------------------------------------------------------------
def _message(e: Any) -> str:
    """One pydantic error in words that say what is accepted."""
    if e["type"] == "literal_error":
        expected = str(e.get("ctx", {}).get("expected", ""))
        values = [v.strip().strip("'") for v in re.split(r",| or ", expected) if v.strip()]
        return f"use one of {', '.join(values)}"
    msg = str(e["msg"])
    return msg[len("Value error, "):] if msg.startswith("Value error, ") else msg


def format_errors(err: ValidationError, source: str) -> str:
    """A :class:`ValidationError` on one line: ``invalid <source>: field: what is accepted (got ...)``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("classic", "ldm", "plugin")) or "(root)"
        got = e.get("input")
        shown = repr(got) if not isinstance(got, dict) else "a mapping"
        parts.append(f"{loc}: {_message(e)} (got {shown[:80]})")
    return f"invalid {source}: " + "; ".join(parts)


def _format_validation(err: ValidationError, source: str) -> str:
    return format_errors(err, f"configuration in {source}")


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {key!r}: expected section.key, e.g. tiling.tile")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_yaml_value(key: str, text: str) -> Any:
    """A value given on the command line, parsed as YAML (one line; refuses empty values and YAML errors)."""
    if not text.strip():
        raise ConfigError(f"{key}= has no value; give one (e.g. {key}=256), or leave the key out for its default")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        what = " ".join(str(e).split())
        raise ConfigError(f"{key}={text!r} is not a YAML value ({what[:120]}); quote strings, e.g. "
                          f"{key}='[1, 2]'") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"tiling.tile=256"`` -> ``("tiling.tile", 256)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. tiling.tile=256")
    k, v = text.split("=", 1)
    return k.strip(), parse_yaml_value(k.strip(), v)


def packaged_configs() -> list[str]:
    """Names of the configurations shipped inside the package (``geosr/configs/*.yaml``)."""
    return sorted(p.name[: -len(".yaml")] for p in resources.files("geosr").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def config_file(path: str | Path) -> Path:
    """``path`` if it is a file; else a packaged configuration of that name (``sentinel2-l2a``,
    ``sentinel2-l2a.yaml`` or ``configs/sentinel2-l2a.yaml``, the path the docs use from a checkout)."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    if p.parent in (Path("."), Path("configs")) and name in packaged_configs():
        return Path(str(resources.files("geosr").joinpath("configs", f"{name}.yaml")))
    raise ConfigError(f"config file {p} does not exist (packaged configurations: {', '.join(packaged_configs())})")


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = config_file(path)
    try:
        loaded = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return loaded


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML file (optional; a path or a packaged configuration's name) and apply dotted-key overrides;
    validate everything."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data = read_config_file(path)
        source = str(path)
    for k, v in (overrides or {}).items():
        if v is not None:
            _set_dotted(data, k, v)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, source + (" + overrides" if overrides else ""))) from None
