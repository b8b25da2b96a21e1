"""`ChunkOutput`'s jaxtyping annotations are checked, and the check can fail."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from step_checks import CHECKED, check_chunk_output

import jaxgrid.batch.run as run
from jaxgrid import GridFitter
from jaxgrid.core import schema
from jaxgrid.core.reductions import HistStats
from jaxgrid.core.step import ChunkOutput


def _fit(small_grid, **kw):
    fitter = GridFitter(small_grid)
    rng = np.random.default_rng(3)
    x = np.asarray(small_grid.observables)[:7] + rng.normal(0, 0.1, (7, 4))
    out = fitter.fit_batch(
        x, np.full_like(x, 0.1), stats_for=["t0", "t1"], return_mode="chunks", **kw
    )
    return list(out)


def _one_output(small_grid):
    """A real chunk output, captured from the runner's (checked) step."""
    seen = []
    step = run.chunk_step

    def capture(*a, **k):
        out = step(*a, **k)
        seen.append(out)
        return out

    run.chunk_step = capture
    try:
        _fit(small_grid, chunk_size=8)
    finally:
        run.chunk_step = step
    return seen[0]


def test_every_step_of_a_fit_is_checked(small_grid):
    before = CHECKED["steps"]
    _fit(small_grid, chunk_size=4)  # 7 rows: two chunks
    assert CHECKED["steps"] - before == 2


def test_a_real_output_passes(small_grid):
    out = _one_output(small_grid)
    assert check_chunk_output(out) is out
    assert out.mean.shape == (8, 2) and out.cov.shape == (8, 2, 2)


@pytest.mark.parametrize(
    "field,bad",
    [
        ("mean", lambda v: v[:, :1]),  # targets 1 where the others say 2
        ("cov", lambda v: v[:, :, :1]),  # not square
        ("log_evidence", lambda v: v[:5]),  # rows 5 where the others say 8
        ("status", lambda v: v.astype(jnp.float32)),  # a float status
        ("nmodes", lambda v: v.astype(jnp.float32)),
        ("cand_w", lambda v: v[:, :0] if v.shape[1] else v[:, None]),  # list sizes differ
        ("best", lambda v: v[:, None]),  # one axis too many
    ],
)
def test_a_wrong_output_fails(small_grid, field, bad):
    out = _one_output(small_grid)
    wrong = dataclasses.replace(out, **{field: bad(getattr(out, field))})
    with pytest.raises(Exception, match=field):
        check_chunk_output(wrong)


def test_schema_matches_the_step_and_the_histogram_stats():
    names = {f.name for f in dataclasses.fields(ChunkOutput)}
    assert set(schema.TARGET_STATS) <= names
    device_rows = {f.name for f in schema.ROW_FIELDS} - {"level", "keep_mass"}
    assert device_rows <= names
    assert schema.HIST_STATS == tuple(f for f in HistStats._fields if f != "density")
