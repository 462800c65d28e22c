"""Exceptions raised by ganx-dask.

Every error a user can provoke with bad input derives from :class:`GanxError` (itself a
``ValueError``), so callers can catch one type; messages name the offending file and field.
"""

from __future__ import annotations

__all__ = [
    "GanxError",
    "ImageError",
    "PigmentError",
    "EnergyAxisError",
    "StoreExistsError",
    "IncompleteStoreWarning",
    "ConfigError",
    "check_known_fields",
]


class GanxError(ValueError):
    """Base class for all user-facing errors of ganx-dask."""


class ImageError(GanxError):
    """The input image cannot be read or is unusable (missing, not an image, empty, ...)."""


class PigmentError(GanxError):
    """A pigment or pigment-library file is malformed (bad formula, spectrum, duplicate name...)."""


class EnergyAxisError(GanxError):
    """An energy-axis specification is invalid or two axes do not overlap."""


class StoreExistsError(GanxError, FileExistsError):
    """The output store exists and neither ``overwrite`` nor ``resume`` was requested."""


class ConfigError(GanxError):
    """A pipeline or cluster configuration file is invalid (the message names the bad key)."""


class IncompleteStoreWarning(UserWarning):
    """A store was opened whose generation did not finish (its ``complete`` flag is not set)."""


def check_known_fields(d: object, cls: type, what: str) -> dict:
    """``d`` as a dict after checking it is a mapping whose keys are fields of dataclass ``cls``.

    Raises
    ------
    ConfigError
        ``d`` is not a mapping, or has keys that are not fields (the message names them).
    """
    from collections.abc import Mapping
    from dataclasses import fields

    if not isinstance(d, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {unknown}; known: {sorted(known)}")
    return dict(d)
