"""Pigment library: pigments, their colours and physically modelled XRF spectra.

Public API
----------
default_library
    The bundled library (>= 40 historical pigments, spectra from a fundamental-parameters model).
PigmentLibrary, Pigment, Layer, MeasuredSpectrum
    The data model (:mod:`ganx_dask.pigments.model`).
Instrument
    Excitation/detection parameters with presets (:mod:`ganx_dask.pigments.physics`).
read_library, write_library, read_ganx_database, write_ganx_database, read_spectrum
    File formats (:mod:`ganx_dask.pigments.formats`).
"""

from .model import Layer, MeasuredSpectrum, Pigment, PigmentLibrary

__all__ = ["Layer", "MeasuredSpectrum", "Pigment", "PigmentLibrary"]

try:  # filled in by the physics / formats modules
    from .physics import Instrument  # noqa: F401

    __all__ += ["Instrument"]
except ImportError:  # pragma: no cover
    pass
try:
    from .library import default_library  # noqa: F401

    __all__ += ["default_library"]
except ImportError:  # pragma: no cover
    pass
try:
    from .formats import (  # noqa: F401
        load_library,
        read_ganx_database,
        read_library,
        read_spectrum,
        write_ganx_database,
        write_library,
    )

    __all__ += [
        "load_library", "read_ganx_database", "read_library", "read_spectrum",
        "write_ganx_database", "write_library",
    ]
except ImportError:  # pragma: no cover
    pass
