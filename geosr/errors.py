"""Typed errors. Each also inherits the builtin a caller would naturally catch.

Messages say what was wrong and how to fix it; the CLI prints ``str(err)`` on one line
and exits with ``err.exit_code``.
"""

from __future__ import annotations


class GeosrError(Exception):
    """Base of every error geosr raises on purpose (a user's mistake or an environment fault)."""

    exit_code = 2


class ConfigError(GeosrError, ValueError):
    """A configuration value (file, CLI flag or keyword) is invalid."""


class InputError(GeosrError, ValueError):
    """The input raster cannot be used as given."""


class InputNotFoundError(InputError, FileNotFoundError):
    """The input path or object does not exist."""


class NotARasterError(InputError):
    """The input exists but is not a raster GDAL can open (or it is truncated/corrupt)."""


class GeoreferenceError(InputError):
    """The input has no CRS / geotransform, or one geosr cannot handle."""


class BandError(InputError, IndexError):
    """A requested band does not exist in the input."""


class OutputError(GeosrError, OSError):
    """The output location cannot be written or is in a conflicting state."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and was written with different parameters; pass --overwrite to replace it."""


class SceneLockedError(OutputError):
    """Another run holds the scene's lease and did not release it within the wait time."""


class LeaseLostError(OutputError):
    """This run's lease on a scene was taken over (it expired); the run stops so two runs do not both write."""


class StorageAuthError(OutputError, PermissionError):
    """Object storage refused the credentials."""


class BucketNotFoundError(OutputError, FileNotFoundError):
    """The object-storage bucket does not exist."""


class ModelError(GeosrError, RuntimeError):
    """A model could not be built, loaded or run."""
