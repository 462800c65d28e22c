"""Seeds are limited to [0, 2**128): beyond, SeedSequence streams of different keys coincide."""

import dask.array as da
import numpy as np
import pytest

from ganx_dask import generate, metrics, sampling
from ganx_dask.errors import ConfigError
from ganx_dask.pipelines.batch import image_seed, run_batch
from ganx_dask.seeding import SEED_LIMIT, check_seed, name_words


def test_large_seeds_would_make_streams_coincide():
    """Why the bound exists: without the 128-bit padding, seed and key words run together."""
    a, t = SEED_LIMIT + 12345, 7
    mc_tile = np.random.SeedSequence(a, spawn_key=(0, t, 1)).generate_state(4)
    subsample = np.random.SeedSequence(a + t * 2**192, spawn_key=(1,)).generate_state(4)
    assert np.array_equal(mc_tile, subsample)
    # below the bound the seed is padded to 4 words: the same construction stays distinct
    b = 12345
    assert not np.array_equal(np.random.SeedSequence(b, spawn_key=(0, t, 1)).generate_state(4),
                              np.random.SeedSequence(b + t * 2**96, spawn_key=(1,)).generate_state(4))


def test_seeds_outside_the_bound_are_refused_everywhere(tmp_path):
    assert check_seed(SEED_LIMIT - 1) == SEED_LIMIT - 1
    for bad in (SEED_LIMIT, -1, 1.5, True, "3"):
        with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*128\)"):
            check_seed(bad)
    lab = da.zeros((4, 4), dtype=np.int16, chunks=4)
    spec = np.full((1, 8), 1 / 8)
    sampling.sample_cube(lab, spec, seed=SEED_LIMIT - 1, counts=5, tile=4)
    with pytest.raises(ConfigError, match="coincide"):
        sampling.sample_cube(lab, spec, seed=SEED_LIMIT, counts=5, tile=4)
    with pytest.raises(ConfigError, match="seed"):
        metrics.poisson_reference(np.zeros((4, 4, 8), np.uint16), seed=SEED_LIMIT)
    with pytest.raises(ConfigError, match="seed"):
        generate(np.zeros((4, 4, 3), np.uint8), seed=SEED_LIMIT)
    with pytest.raises(ConfigError, match="master seed"):
        image_seed(SEED_LIMIT, "a")
    with pytest.raises(ConfigError, match="batch key 'seed'"):
        run_batch([str(tmp_path)], tmp_path / "out.zarr", seed=SEED_LIMIT)
    assert not (tmp_path / "out.zarr").exists()


def test_name_words_are_stable():
    # fixed values: any change would change every existing batch image's seed
    assert name_words("a")[:2] == (0x128197CA, 0xCABD1BCA)
    assert image_seed(0, "a") == 3517024689085275353 != image_seed(0, "b")
