"""Exceptions a user can hit. Messages name the file, row or field and what was expected."""

from __future__ import annotations


class SkinLesionError(Exception):
    """Base class of the package's user-facing errors."""


class DataError(SkinLesionError, ValueError):
    """Bad dataset content: missing or unreadable images, unknown labels, malformed rows."""


class ConfigError(SkinLesionError, ValueError):
    """An invalid configuration file or override."""


class PretrainedWeightsError(SkinLesionError, RuntimeError):
    """Pretrained weights cannot be obtained from the requested source."""


class DownloadError(SkinLesionError, RuntimeError):
    """A dataset download failed (offline, checksum mismatch, bad archive)."""


class CheckpointError(SkinLesionError, ValueError):
    """A checkpoint is missing, incomplete or inconsistent."""
