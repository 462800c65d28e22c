"""Domain randomisation of a batch: each image draws its own instrument, detector, counts and palette.

A batch config's ``randomize:`` section gives, per parameter, a distribution::

    randomize:
      counts: {log_uniform: [200, 2000], integer: true}   # photons per pixel
      count_model: {choices: [fixed, poisson], weights: [3, 1]}
      threshold: {uniform: [0.2, 0.8]}                    # matching threshold
      pigments: {subset: [4, 9], from: paper}             # palette: 4-9 of the paper's pigments
      instrument:
        preset: {choices: [lab-rh, lab-mo, lab-w]}
        kv: {uniform: [35, 50]}                           # kV
        filters: {choices: [[], [[Al, 100]]]}             # (formula, µm)
        noise_fwhm_kev: {uniform: [0.06, 0.12]}           # keV
        tail_fraction: {uniform: [0.0, 0.03]}
        shelf_fraction: {log_uniform: [0.0001, 0.003]}
      detector:
        pulse_pair_ns: {uniform: [100, 600]}              # pile-up resolution, ns
        input_rate_cps: {log_uniform: [10000, 200000]}    # pile-up rate, counts/s
        blur_fwhm_px: {uniform: [0, 2]}                   # beam spot, pixels

Distributions (one key each): ``uniform: [low, high]``, ``log_uniform: [low, high]`` (both
optionally ``integer: true``), ``choices: [...]`` with optional ``weights``, and for
``pigments`` also ``subset: [kmin, kmax]`` with optional ``from`` (a list of names or
``paper``; default: the whole library).  Allowed keys: ``counts``, ``count_model``, and the
matching options ``threshold``, ``similarity``, ``mode``, ``margin``, ``max_pigments``,
``lightness_factor``, ``pigments``; ``instrument.preset`` and every
:class:`~ganx_dask.pigments.physics.Instrument` field; ``detector.preset`` (a detector preset
or ``null``) and every :class:`~ganx_dask.detector.DetectorEffects` field.  A drawn instrument
or detector starts from the drawn (or the ``generation`` section's) preset and replaces the
drawn fields.

**Determinism.**  The value of key ``K`` (dotted, e.g. ``instrument.kv``) for an image comes
from ``PCG64(SeedSequence(image_seed, spawn_key=(6, *sha256(K) as 8 uint32 words)))``, where
``image_seed`` is the image's seed (:func:`~ganx_dask.seeding.image_seed`: from the
master seed and the image *name*).  So a draw depends only on the master seed, the image name
and that key's distribution: adding images, or randomising one more key, changes no existing
draw.  Each draw is recorded in the image group's ``randomized`` attribute and in its manifest
record (``ganx-dask batch --dry-run`` prints them without writing anything).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, GanxError
from ..io import group_name
from ..seeding import image_seed, name_words

__all__ = [
    "RANDOMIZE_KEY",
    "TOP_KEYS",
    "Distribution",
    "parse_randomize",
    "draw",
    "draw_rng",
    "apply_draw",
    "image_generation",
    "check_draw",
    "batch_draws",
]

#: Spawn-key namespace of the randomisation draws (docs/architecture.md, "Determinism rule").
RANDOMIZE_KEY = 6

#: Randomisable top-level generation keys and whether they take numeric ranges.
TOP_KEYS: dict[str, bool] = {
    "counts": True, "count_model": False, "threshold": True, "similarity": False,
    "mode": False, "margin": True, "max_pigments": True, "lightness_factor": True,
    "pigments": False,
}

_KINDS = ("uniform", "log_uniform", "choices", "subset")


@dataclass(frozen=True)
class Distribution:
    """One randomised parameter.

    Attributes
    ----------
    kind : {"uniform", "log_uniform", "choices", "subset"}
    low, high : float
        Range of ``uniform``/``log_uniform`` (inclusive), in the parameter's unit.
    integer : bool
        Round a range draw to an integer (``uniform``: uniform over the integers in range).
    values : tuple
        The choices, or the pool of a ``subset``.
    weights : tuple of float or None
        Relative weights of the choices (``None``: equal).
    size : tuple of int
        ``(kmin, kmax)`` of a ``subset`` (inclusive).
    """

    kind: str
    low: float = 0.0
    high: float = 0.0
    integer: bool = False
    values: tuple = ()
    weights: tuple[float, ...] | None = None
    size: tuple[int, int] = (0, 0)

    def sample(self, rng: np.random.Generator) -> Any:
        """One value drawn with ``rng`` (JSON-able: float, int, str, list or None)."""
        if self.kind == "uniform":
            if self.integer:
                return int(rng.integers(int(self.low), int(self.high), endpoint=True))
            return float(rng.uniform(self.low, self.high))
        if self.kind == "log_uniform":
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
            return min(max(int(round(x)), int(self.low)), int(self.high)) if self.integer else float(x)
        if self.kind == "choices":
            p = None if self.weights is None else np.asarray(self.weights) / sum(self.weights)
            return copy.deepcopy(self.values[int(rng.choice(len(self.values), p=p))])
        k = int(rng.integers(self.size[0], self.size[1], endpoint=True))
        picked = np.sort(rng.choice(len(self.values), size=k, replace=False))
        return [self.values[i] for i in picked]

    def extremes(self) -> list:
        """The values that bound the distribution (checked against the target up front)."""
        if self.kind in ("uniform", "log_uniform"):
            return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]
        if self.kind == "choices":
            return [copy.deepcopy(v) for v in self.values]
        return [list(self.values[: self.size[0]]), list(self.values)]  # every name is checked


def _section_fields() -> dict[str, dict[str, bool]]:
    """Randomisable keys of the ``instrument`` and ``detector`` sections → numeric or not."""
    from ..detector import DetectorEffects
    from ..pigments.physics import Instrument

    def numeric(cls) -> dict[str, bool]:
        return {f.name: str(f.type).startswith("float") for f in dataclasses.fields(cls)
                if f.name != "name"}

    return {"instrument": {"preset": False, **numeric(Instrument)},
            "detector": {"preset": False, **numeric(DetectorEffects)}}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_one(value: Any, key: str, numeric: bool, pool: tuple | None, bad) -> Distribution:
    if not isinstance(value, Mapping):
        raise bad(key, f"must be a mapping with one of {', '.join(_KINDS)}, got {value!r}")
    kinds = [k for k in _KINDS if k in value]
    extra = set(value) - set(_KINDS) - {"integer", "weights", "from"}
    if len(kinds) != 1 or extra:
        raise bad(key, f"give exactly one of {', '.join(_KINDS)} (optional: integer, weights, "
                       f"from), got keys {sorted(value)}")
    kind = kinds[0]
    arg = value[kind]
    allowed = {"uniform": {"integer"}, "log_uniform": {"integer"}, "choices": {"weights"},
               "subset": {"from"}}[kind]
    if set(value) - {kind} - allowed:
        raise bad(key, f"{sorted(set(value) - {kind} - allowed)[0]!r} does not apply to {kind}")
    if kind in ("uniform", "log_uniform"):
        if not numeric:
            raise bad(key, f"takes choices, not a {kind} range")
        if not (isinstance(arg, list) and len(arg) == 2 and all(_number(v) for v in arg)):
            raise bad(key, f"{kind} must be [low, high] (two numbers), got {arg!r}")
        lo, hi = float(arg[0]), float(arg[1])
        if lo > hi:
            raise bad(key, f"{kind} low {arg[0]} is above high {arg[1]}")
        if kind == "log_uniform" and lo <= 0:
            raise bad(key, f"log_uniform needs low > 0, got {arg[0]}")
        integer = value.get("integer", False)
        if not isinstance(integer, bool):
            raise bad(key, f"integer must be true or false, got {integer!r}")
        if integer and (lo != int(lo) or hi != int(hi)):
            raise bad(key, f"an integer range needs integer bounds, got {arg!r}")
        return Distribution(kind, lo, hi, integer=integer)
    if kind == "choices":
        if not isinstance(arg, list) or not arg:
            raise bad(key, f"choices must be a non-empty list, got {arg!r}")
        weights = value.get("weights")
        if weights is not None:
            if (not isinstance(weights, list) or len(weights) != len(arg)
                    or not all(_number(w) and w >= 0 for w in weights) or sum(weights) <= 0):
                raise bad(key, f"weights must be {len(arg)} non-negative numbers with a "
                               f"positive sum, got {weights!r}")
            weights = tuple(float(w) for w in weights)
        return Distribution("choices", values=tuple(arg), weights=weights)
    if pool is None:
        raise bad(key, "subset applies to pigments only")
    src = value.get("from")
    if src is not None:
        from ..pigments.library import PAPER_PIGMENTS

        if isinstance(src, str) and src.strip().lower() == "paper":
            pool = tuple(PAPER_PIGMENTS)
        elif isinstance(src, list) and src and all(isinstance(n, str) for n in src):
            pool = tuple(src)
        else:
            raise bad(key, f"from must be a list of pigment names or 'paper', got {src!r}")
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, int) and
                                                            not isinstance(v, bool) for v in arg)):
        raise bad(key, f"subset must be [kmin, kmax] (integers), got {arg!r}")
    if not 1 <= arg[0] <= arg[1] <= len(pool):
        raise bad(key, f"subset sizes must satisfy 1 <= kmin <= kmax <= {len(pool)} "
                       f"(pigments to choose from), got {arg!r}")
    return Distribution("subset", values=tuple(pool), size=(int(arg[0]), int(arg[1])))


def parse_randomize(
    section: Mapping[str, Any] | None,
    *,
    source: str = "config",
    library=None,
    generation: Mapping[str, Any] | None = None,
) -> dict[str, Distribution]:
    """Validate a ``randomize:`` section.

    Parameters
    ----------
    section : mapping or None
        The parsed section (``None``/empty: nothing is randomised).
    source : str
        File name for error messages.
    library : PigmentLibrary or None
        The batch's library (``None``: the default): pigment names are checked against it and
        it is the pool of a ``subset`` without ``from``.
    generation : mapping or None
        The batch's ``generation`` section: the bounds of every distribution (range ends, each
        choice) are tried on it, so a value the generator would refuse fails here.

    Returns
    -------
    dict
        Dotted key (``"instrument.kv"``) → :class:`Distribution`, sorted by key.

    Raises
    ------
    ConfigError
        The message names the file and the dotted key (``randomize.instrument.kv``).
    """
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{source}: key 'randomize.{key}': {msg}")

    if not section:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: key 'randomize' must be a mapping, got {section!r}")
    from ..generator import _resolve_library

    lib = _resolve_library(library)
    sections = _section_fields()
    out: dict[str, Distribution] = {}
    for key, value in section.items():
        if key in sections:
            if not isinstance(value, Mapping):
                raise bad(key, f"must be a mapping of {key} fields, got {value!r}")
            for sub, v in value.items():
                if sub not in sections[key]:
                    raise bad(f"{key}.{sub}", f"unknown {key} field (allowed: "
                                              f"{', '.join(sections[key])})")
                out[f"{key}.{sub}"] = _parse_one(v, f"{key}.{sub}", sections[key][sub], None, bad)
        elif key in TOP_KEYS:
            pool = tuple(lib.names) if key == "pigments" else None
            out[key] = _parse_one(value, key, TOP_KEYS[key], pool, bad)
        else:
            raise bad(key, f"unknown key (allowed: {', '.join([*TOP_KEYS, *sections])})")
    out = dict(sorted(out.items()))
    _probe(out, dict(generation or {}), lib, bad, source)
    return out


def _probe(dists: dict[str, Distribution], generation: dict, lib, bad, source: str) -> None:
    """Try every bound of every distribution (others at their first bound) on the generator's
    checks; the error names the key whose value failed."""
    first = {k: d.extremes()[0] for k, d in dists.items()}
    try:
        check_draw(generation, first, lib)
    except GanxError as exc:
        for key in dists:  # a value refused on its own names its key
            try:
                check_draw(generation, {key: first[key]}, lib)
            except GanxError as alone:
                raise bad(key, f"value {first[key]!r} is refused: {alone}") from None
        keys = ", ".join(f"randomize.{k}" for k in dists)
        raise ConfigError(f"{source}: keys {keys}: their first values "
                          f"{first} are refused together: {exc}") from None
    for key, dist in dists.items():
        for v in dist.extremes()[1:]:
            try:
                check_draw(generation, {**first, key: v}, lib)
            except GanxError as exc:
                raise bad(key, f"value {v!r} is refused: {exc}") from None


def draw_rng(image_seed: int, key: str) -> np.random.Generator:
    """The generator of key ``key`` for an image: ``SeedSequence(image_seed, (6, *sha256(key)))``."""
    ss = np.random.SeedSequence(int(image_seed), spawn_key=(RANDOMIZE_KEY, *name_words(key)))
    return np.random.Generator(np.random.PCG64(ss))


def draw(dists: Mapping[str, Distribution], seed: int, image_name: str) -> dict[str, Any]:
    """The randomised parameters of one image.

    Parameters
    ----------
    dists : mapping
        From :func:`parse_randomize`.
    seed : int
        The batch's master seed.
    image_name : str
        The image's name (its group name).

    Returns
    -------
    dict
        Dotted key → drawn value (JSON-able), sorted by key.
    """
    s = image_seed(seed, image_name)
    return {k: dists[k].sample(draw_rng(s, k)) for k in sorted(dists)}


def _preset_dict(kind: str, value) -> dict[str, Any]:
    """A section's base as a dict: an Instrument/DetectorEffects, a dict, a preset name, None."""
    if value is None:
        return {}
    if kind == "instrument":
        from ..pigments.physics import as_instrument

        return as_instrument(value).to_dict()
    from ..detector import DETECTOR_PRESETS, DetectorEffects

    if isinstance(value, DetectorEffects):
        return value.to_dict()
    if isinstance(value, str):
        key = value.strip().lower()
        if key not in DETECTOR_PRESETS:
            raise ConfigError(f"unknown detector preset {value!r}; known: {sorted(DETECTOR_PRESETS)}")
        return dict(DETECTOR_PRESETS[key])
    return dict(value)


def apply_draw(generation: Mapping[str, Any], drawn: Mapping[str, Any]) -> tuple[dict, Any]:
    """The generation options of one image: ``generation`` with the drawn values in.

    Returns
    -------
    dict
        Keyword options for :func:`ganx_dask.generate` (``instrument``/``detector`` as dicts
        when drawn).
    pigments
        The drawn palette (a list of names or ``"paper"``), or ``None`` when not drawn.
    """
    gen = dict(generation)
    for section in ("instrument", "detector"):
        fields = {k.split(".", 1)[1]: v for k, v in drawn.items() if k.startswith(section + ".")}
        if not fields:
            continue
        base = _preset_dict(section, fields.pop("preset") if "preset" in fields
                            else gen.get(section))
        base.update(fields)
        gen[section] = base or None
    for key in TOP_KEYS:
        if key in drawn and key != "pigments":
            gen[key] = drawn[key]
    return gen, drawn.get("pigments")


def image_generation(generation: Mapping[str, Any], library, drawn: Mapping[str, Any]):
    """``(options, library)`` for :func:`ganx_dask.generate` of one image with draw ``drawn``
    (the library reduced to the drawn palette, if any)."""
    gen, pigments = apply_draw(generation, drawn)
    if pigments is not None:
        from ..pigments.library import select_pigments

        library = select_pigments(library, pigments)
    return gen, library


def check_draw(generation: Mapping[str, Any], drawn: Mapping[str, Any], library=None) -> None:
    """Raise the error the generator would raise for these drawn values (cheap: no rendering).

    Raises
    ------
    GanxError
        An invalid instrument, detector, count model, matching parameter or pigment name.
    """
    from ..generator import _check_detector, _validate
    from ..pigments.library import select_pigments
    from ..pigments.physics import as_instrument

    gen, pigments = apply_draw(generation, drawn)
    params = {"seed": 0, "luminosity": None, **gen}
    params.pop("library", None)
    params.pop("pigments", None)
    if "energy" in params:
        _validate(params)
    if gen.get("instrument") is not None:
        as_instrument(gen["instrument"])
    _check_detector(gen.get("detector"), gen.get("count_model", "fixed"))
    if pigments is not None:
        if not isinstance(pigments, (str, list)):
            raise ConfigError(f"pigments must be a list of names or 'paper', got {pigments!r}")
        select_pigments(library, pigments)


def batch_draws(cfg: Mapping[str, Any], config, files, generation: Mapping[str, Any], library,
                params: dict[str, Any]) -> tuple[dict[str, dict], dict[str, Any]]:
    """Validate a batch's ``randomize`` section and draw every image's parameters up front.

    Returns the draws by image name (empty dicts when nothing is randomised) and the batch
    parameters with the section added (only when it is not empty, so datasets made without
    randomisation keep their parameters).

    Raises
    ------
    ConfigError
        A bad entry (naming ``randomize.KEY``) or an image whose drawn combination the generator
        would refuse (naming the image).
    """
    from ..generator import _resolve_library

    library = _resolve_library(library)  # once: the default library is a fresh copy per call
    source = str(config) if isinstance(config, (str, bytes)) or hasattr(config, "__fspath__") \
        else "batch config"
    dists = parse_randomize(cfg.get("randomize"), source=source, library=library,
                            generation=generation)
    draws = {}
    for path in files:
        name = group_name(path)
        draws[name] = draw(dists, cfg["seed"], name)
        try:
            check_draw(generation, draws[name], library)
        except GanxError as exc:
            raise ConfigError(f"{source}: randomize: image {name!r} draws {draws[name]}, which "
                              f"is refused: {exc}") from None
    if dists:
        params = {**params, "randomize": copy.deepcopy(dict(cfg["randomize"]))}
    return draws, params
