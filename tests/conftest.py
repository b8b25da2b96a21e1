import atexit
import os
import shutil
import tempfile

# A persistent XLA compilation cache for the test session (set before JAX is imported,
# and inherited by the subprocesses tests start: CLI runs, killed writers, notebooks,
# bench smoke runs). The same step configurations are compiled again and again — after
# every module's jax.clear_caches() and in every subprocess — and a cache hit is a load,
# not a compile. Test configuration only: the library never sets it. An explicit
# JAX_COMPILATION_CACHE_DIR of the caller wins.
# One folder per pytest process (xdist workers do not share one), removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="jaxgrid-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxgrid import ModelGrid


@pytest.fixture
def x64():
    """Run a test with float64 JAX (the library never sets this itself)."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def make_grid(rng, n=500, p=4, q=3, weights=False, meta=None):
    obs = rng.normal(20.0, 1.5, size=(n, p))
    tgt = np.column_stack([rng.uniform(0.1, 10.0, size=n) for _ in range(q)])
    w = rng.uniform(0.2, 2.0, size=n) if weights else None
    return ModelGrid(
        obs,
        tgt,
        [f"mag_{i}" for i in range(p)],
        [f"t{i}" for i in range(q)],
        weights=w,
        meta=meta,
    )


@pytest.fixture
def small_grid(rng):
    return make_grid(rng)


@pytest.fixture(autouse=True, scope="session")
def _checked_chunk_steps():
    """Every chunk step of a batch fit in the suite is checked against `ChunkOutput`'s
    jaxtyping annotations (``tests/step_checks.py``)."""
    from step_checks import checked_step

    import jaxgrid.batch.run as run

    original = run.chunk_step
    run.chunk_step = checked_step(original)
    try:
        yield
    finally:
        run.chunk_step = original


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Drop JAX's compiled executables after each test module. Without it one pytest
    process of the whole suite holds thousands of XLA:CPU executables, each with its own
    memory mappings, and runs into the kernel's ``vm.max_map_count`` (65530): the next
    compilation then segfaults inside XLA (seen at test 614 of 619)."""
    yield
    jax.clear_caches()
