"""Writes the BESTA-made grid files of this folder with the real BESTA 0.6.2.

Run once, with BESTA's grid module importable (recipe: bench/README.md, "The real
BESTA"):

    PYTHONPATH=/tmp/besta/src /tmp/besta/venv/bin/python tests/data/besta/make_besta_files.py

The files are committed (a few kB); tests/test_besta_files.py reads them with jaxgrid
and compares with `expected_grid` below (the same arrays, rebuilt without BESTA).
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def expected_arrays():
    """The grid's arrays: 20 models, 3 observables, 2 targets, weights (float64)."""
    x = np.linspace(0.0, 1.0, 20)
    y = np.sin(np.arange(20.0)) * 0.5 + 0.5
    observables = np.column_stack([2.0 * x + 0.5 * y, -x + 3.0 * y, 0.1 + x + y])
    targets = np.column_stack([x, y])
    weights = np.linspace(1.0, 2.0, 20)
    return observables, targets, weights


NAMES = (["o1", "o2", "mag"], ["x", "y"])
META = {"source": "besta 0.6.2", "units": {"x": "dex", "y": "Gyr"}, "n": 20, "note": "é ok"}


def main():
    from besta.grid.grid import ModelGrid

    obs, tgt, w = expected_arrays()

    def grid(weights):
        return ModelGrid(
            observables=obs,
            targets=tgt,
            observable_names=NAMES[0],
            target_names=NAMES[1],
            weights=weights,
            meta=META,
        )

    plain = grid(None)
    plain.to_hdf5(str(HERE / "besta_plain.h5"), overwrite=True)
    plain.to_fits_table(str(HERE / "besta_plain.fits"), overwrite=True)
    fitted = grid(w)
    fitted.fit_standardiser()
    fitted.fit_target_standardiser(mask=np.arange(20) < 15)
    fitted.to_hdf5(str(HERE / "besta_fitted.h5"), overwrite=True)
    fitted.to_fits_table(str(HERE / "besta_fitted.fits"), overwrite=True)
    payload = fitted.to_dict()
    # a grid without targets (BESTA writes and reads them) and a BESTA pickle
    no_targets = ModelGrid(
        observables=obs, targets=np.empty((20, 0)), observable_names=NAMES[0],
        target_names=[], meta={"kind": "observables only"},
    )  # fmt: skip
    no_targets.to_hdf5(str(HERE / "besta_no_targets.h5"), overwrite=True)
    no_targets.to_fits_table(str(HERE / "besta_no_targets.fits"), overwrite=True)
    plain.to_pickle(str(HERE / "besta_grid.pkl"))

    def plain_json(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, dict):
            return {k: plain_json(u) for k, u in v.items()}
        return v

    (HERE / "besta_fitted_dict.json").write_text(json.dumps(plain_json(payload), indent=1))
    std = fitted.observable_standardiser
    tstd = fitted.target_standardiser
    (HERE / "besta_standardisers.json").write_text(
        json.dumps(
            {
                "observables": {"mean": std.mean.tolist(), "sd": std.sd.tolist()},
                "targets": {"mean": tstd.mean.tolist(), "sd": tstd.sd.tolist()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
