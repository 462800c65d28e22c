"""YAML configuration files: loading and validation against a declared schema.

Every pipeline and cluster configuration is a YAML mapping whose keys are declared once, as a
*schema* (a mapping of key → :class:`Option`, or key → nested schema for a sub-section).
:func:`validate` fills in defaults and rejects anything else: an unknown key, or a value of the
wrong type or outside its allowed choices, raises :class:`~ganx_dask.errors.ConfigError` whose
message names the file and the dotted key (``generation.counts``).  :func:`describe` renders a
schema as a Markdown table, which is how the documented defaults in ``pipelines/*/README.md`` and
``cluster_configs/README.md`` are produced.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["Option", "validate", "load_yaml", "load_config", "describe", "defaults"]


@dataclass(frozen=True)
class Option:
    """One configuration key.

    Parameters
    ----------
    types : type or tuple of types
        Accepted Python types after YAML parsing (``int`` values are accepted where ``float`` is
        asked; ``bool`` is never accepted as a number).
    default : object
        Value used when the key is absent.
    doc : str
        One-line meaning, with units.
    choices : tuple or None
        When given, the value must be one of these.
    nullable : bool
        Whether ``null`` (``None``) is allowed.
    minimum : float or None
        Smallest allowed value for numbers.
    """

    types: type | tuple[type, ...]
    default: Any
    doc: str
    choices: tuple | None = None
    nullable: bool = False
    minimum: float | None = None


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _check(value: Any, opt: Option, key: str, source: str) -> Any:
    if value is None:
        if opt.nullable:
            return None
        raise ConfigError(f"{source}: key {key!r} must not be null")
    types = opt.types if isinstance(opt.types, tuple) else (opt.types,)
    ok = False
    for t in types:
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True  # an int is a valid float (kept as given)
            break
        if t in (int, float) and isinstance(value, bool):
            continue
        if isinstance(value, t):
            ok = True
            break
    if not ok:
        raise ConfigError(
            f"{source}: key {key!r} must be {_type_names(types)}, "
            f"got {type(value).__name__} ({value!r})"
        )
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(
            f"{source}: key {key!r} must be one of {list(opt.choices)}, got {value!r}"
        )
    if opt.minimum is not None and isinstance(value, (int, float)) and value < opt.minimum:
        raise ConfigError(f"{source}: key {key!r} must be >= {opt.minimum:g}, got {value!r}")
    return value


def validate(
    data: Mapping[str, Any] | None,
    schema: Mapping[str, Any],
    *,
    source: str = "config",
    prefix: str = "",
) -> dict[str, Any]:
    """Check a parsed configuration against a schema and fill in defaults.

    Parameters
    ----------
    data : mapping or None
        The parsed configuration (``None`` = empty).
    schema : mapping
        Key → :class:`Option`, or key → nested schema (a sub-section).
    source : str
        Name used in error messages (usually the file path).
    prefix : str
        Dotted prefix of ``data`` inside the whole file (for error messages).

    Returns
    -------
    dict
        A new dict with every schema key present.

    Raises
    ------
    ConfigError
        On an unknown key, a wrong type, a value outside its choices, or a section that is not a
        mapping; the message names ``source`` and the dotted key.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        where = f"section {prefix.rstrip('.')!r}" if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in schema]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix + str(unknown[0])!r} "
            f"(allowed{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(schema)})"
        )
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        dotted = prefix + key
        if isinstance(spec, Option):
            # a copy: a caller that edits its config must not change the schema's default
            out[key] = _check(data[key], spec, dotted, source) if key in data \
                else copy.deepcopy(spec.default)
        else:
            out[key] = validate(data.get(key), spec, source=source, prefix=dotted + ".")
    return out


def defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Every key of ``schema`` at its default value (nested sections included)."""
    return validate({}, schema, source="defaults")


def _yaml_problem(exc: Exception) -> str:
    """One-line description of a YAML parse error: ``" at line L, column C: problem"``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {' '.join(str(problem).split())}"


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file that must contain a mapping (an empty file is an empty mapping).

    Raises
    ------
    ConfigError
        When the file is missing, unreadable, not valid YAML, or not a mapping.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text (YAML) file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _relative_to(base: str, value: Any) -> Any:
    """``value`` (a path, a list of paths or None) with relative paths joined to ``base``."""
    if isinstance(value, str):
        from ..storage import is_url

        if is_url(value):  # s3://bucket/... is never relative to the config's folder
            return value
        p = os.path.expanduser(value)
        return p if os.path.isabs(p) else os.path.join(base, p)
    if isinstance(value, list):
        return [_relative_to(base, v) for v in value]
    return value


def load_config(
    config: str | os.PathLike | Mapping[str, Any] | None,
    schema: Mapping[str, Any],
    *,
    name: str = "config",
    path_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Validate a config given as a YAML file, a mapping, or ``None`` (the defaults).

    Parameters
    ----------
    config : path, mapping or None
    schema : mapping
        The schema (:class:`Option` leaves, nested sections).
    name : str
        What the config is, for messages (``"batch"`` -> ``"batch defaults"``).
    path_keys : tuple of str
        Dotted keys holding paths (or lists of paths): in a *file*, relative ones are taken
        relative to the file's folder.

    Raises
    ------
    ConfigError
        Unknown key or wrong type (naming the dotted key), missing or malformed file.
    """
    if config is None:
        return validate({}, schema, source=f"{name} defaults")
    if isinstance(config, Mapping):
        return validate(config, schema, source=f"{name} config")
    path = os.fspath(config)
    cfg = validate(load_yaml(path), schema, source=path)
    base = os.path.dirname(os.path.abspath(path))
    for dotted in path_keys:
        *parents, leaf = dotted.split(".")
        section = cfg
        for key in parents:
            section = section[key]
        section[leaf] = _relative_to(base, section[leaf])
    return cfg


def describe(schema: Mapping[str, Any], prefix: str = "") -> str:
    """A Markdown table (key, type, default, meaning) of a schema, nested sections flattened."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"] if not prefix else []
    for key, spec in schema.items():
        if isinstance(spec, Option):
            types = spec.types if isinstance(spec.types, tuple) else (spec.types,)
            tname = _type_names(types) + (" or null" if spec.nullable else "")
            doc = spec.doc + (f" One of {list(spec.choices)}." if spec.choices else "")
            rows.append(f"| `{prefix}{key}` | {tname} | `{spec.default!r}` | {doc} |")
        else:
            rows.append(describe(spec, prefix=f"{prefix}{key}."))
    return "\n".join(rows)
