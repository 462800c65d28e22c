"""Seeds and spawn keys: the input side of the determinism rule (docs/architecture.md).

Every random stream is ``PCG64(SeedSequence(seed, spawn_key=(NAMESPACE, ...)))``.
:class:`numpy.random.SeedSequence` pads the seed's 32-bit words to its pool size (4 words,
128 bits) *only* when the seed is shorter than that, and then appends the spawn key.  A seed of
2¹²⁸ or more is therefore not padded, and the boundary between seed words and key words
disappears: ``seed = a + t·2¹⁹²`` (words ``a₀…a₄, 0, t``) with key ``(1,)`` assembles the same
words as ``seed = a`` with key ``(0, t, 1)``, so the clustering subsample of one seed would
replay the Monte Carlo of tile ``(t, 1)`` of another.  Seeds are therefore limited to
``[0, 2**128)`` (:func:`check_seed`), where the padding makes every (seed, key) pair distinct.
Folding larger seeds into 128 bits was rejected: it would silently map different seeds to the
same cube.
"""

from __future__ import annotations

import hashlib
import numbers

import numpy as np

from .errors import ConfigError

__all__ = ["SEED_LIMIT", "check_seed", "image_seed", "name_words"]

#: Seeds must be below this bound (``SeedSequence``'s pool of four 32-bit words).
SEED_LIMIT = 2**128


def check_seed(seed, where: str = "seed") -> int:
    """The seed as an ``int`` if it lies in ``[0, 2**128)``.

    Parameters
    ----------
    seed : int
        The seed.
    where : str
        How the error message names it (``"seed"``, ``"batch.yaml: key 'seed'"``).

    Raises
    ------
    ConfigError
        A non-integer, negative or too large seed (see the module docstring for why).
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(
            f"{where} must be an integer in [0, 2**128), got {seed!r}"
            + (" (larger seeds can make two random streams coincide)"
               if isinstance(seed, numbers.Integral) and seed >= SEED_LIMIT else "")
        )
    return int(seed)


def name_words(name: str) -> tuple[int, ...]:
    """A stable spawn-key suffix for a name: its UTF-8 SHA-256 as eight 32-bit words.

    Unlike Python's ``hash()`` this is the same in every process and on every machine.
    """
    words = np.frombuffer(hashlib.sha256(name.encode("utf-8")).digest(), dtype="<u4")
    return tuple(int(w) for w in words)


def image_seed(master_seed: int, name: str) -> int:
    """Seed of one image, from the master seed and the image's name only.

    ``SeedSequence(master_seed, spawn_key=<sha256(name) as 8 uint32 words>)`` → one 63-bit
    integer.  Independent of the image's position in the collection.

    Parameters
    ----------
    master_seed : int
        Non-negative master seed of the batch.
    name : str
        The image's name (its group name).
    """
    ss = np.random.SeedSequence(check_seed(master_seed, "master seed"), spawn_key=name_words(name))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
