"""`GridFitter.fit_batch` shows its real signature, and it is `BatchOptions`' fields."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from jaxgrid import GridFitter
from jaxgrid.batch import BatchOptions


def test_fit_batch_signature_is_the_options_fields_with_their_defaults():
    sig = inspect.signature(GridFitter.fit_batch)
    params = list(sig.parameters.values())
    assert [p.name for p in params[:3]] == ["self", "X_native", "SIG_native"]
    fields = dataclasses.fields(BatchOptions)
    # then BESTA's keywords with no BatchOptions field (mapped or ignored with a warning)
    besta = ["max_memory_gb", "memcheck_sample", "safety_margin", "tasks_per_worker"]
    assert [p.name for p in params[3:]] == [f.name for f in fields] + besta
    for p, f in zip(params[3:], fields, strict=False):
        assert p.default == f.default, p.name
    assert all(sig.parameters[name].default is None for name in besta)
    # BESTA's positional order up to dry_run; the rest keyword-only
    kinds = {p.name: p.kind for p in params}
    assert kinds["dry_run"] is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert kinds["chunk_size"] is inspect.Parameter.KEYWORD_ONLY
    assert "Fit a catalog" in GridFitter.fit_batch.__doc__


@pytest.mark.parametrize(
    ("kw", "err", "text"),
    [
        ({"return_mode": "dict"}, ValueError, "`return_mode` must be one of"),
        ({"resume": True}, ValueError, "`resume=True` needs `output_hdf5_path`"),
        ({"chunk_size": 8.5}, ValueError, "`chunk_size` must be an integer"),
        ({"n_jobs": "2"}, TypeError, "`n_jobs` must be an integer"),
        ({"posterior_keep_mass": True}, TypeError, "`posterior_keep_mass` must be a number"),
        (
            {"posterior_keep_min_candidates": 9, "posterior_keep_max_candidates": 3},
            ValueError,
            "cannot exceed the maximum",
        ),
    ],
)
def test_options_refuse_bad_settings_with_the_keyword_named(kw, err, text):
    with pytest.raises(err, match=text):
        BatchOptions(**kw)


def test_defaults():
    o = BatchOptions()
    assert o.keep_min == 128 and o.truncate
    assert not BatchOptions(posterior_keep_mass=1.0).truncate
    assert BatchOptions(posterior_keep_mass=1.0, posterior_keep_max_candidates=5).truncate
