import time

import numpy as np
import pytest

from jaxgrid.data import data_path
from jaxgrid.photometry import (
    band_fnu,
    build_template_grid,
    madau95_transmission,
    read_filter,
    read_sed,
)

BANDS = "ugrizy"


def _filters():
    return [data_path("photoz", "FILTER", f"DC2LSST_{b}.res") for b in BANDS]


def _seds():
    names = data_path("photoz", "SED", "CWWSB4.list").read_text().split()
    return [data_path("photoz", "SED", n) for n in names]


def _tophat(lo, hi):
    w = np.linspace(lo - 10, hi + 10, 4001)
    return w, ((w >= lo) & (w <= hi)).astype(float)


def test_flat_fnu_source_has_equal_magnitudes_in_every_band():
    w = np.linspace(100, 30000, 60000)
    flat_fnu = (w, 1.0 / w**2)  # F_lambda ∝ lambda^-2  <=>  f_nu constant
    g = build_template_grid([flat_fnu], _filters(), [0.0, 0.7], output="mag")
    mags = np.asarray(g.observables, np.float64)
    assert np.ptp(mags, axis=1).max() < 1e-5


@pytest.mark.parametrize("alpha", [-2.0, -0.5, 1.5])
def test_power_law_colour_matches_analytic(alpha):
    # f_nu ∝ nu^alpha ∝ lambda^-alpha, i.e. F_lambda ∝ lambda^(-alpha-2)
    w = np.linspace(1000, 20000, 200_000)
    sed = (w, w ** (-alpha - 2.0))
    f1, f2 = _tophat(4000, 5000), _tophat(7000, 8500)
    b1, b2 = band_fnu(sed, f1, 0.0), band_fnu(sed, f2, 0.0)

    def mean_fnu(lo, hi):  # int lambda^-alpha dlambda/lambda / int dlambda/lambda
        num = (hi ** (-alpha) - lo ** (-alpha)) / (-alpha)
        return num / np.log(hi / lo)

    colour = -2.5 * np.log10(b1 / b2)
    want = -2.5 * np.log10(mean_fnu(4000, 5000) / mean_fnu(7000, 8500))
    assert colour[0] == pytest.approx(want, abs=2e-4)


def test_redshifted_template_matches_direct_integration():
    sed = read_sed(_seds()[1])
    filt = read_filter(_filters()[2])
    for z in (0.0, 0.37, 1.25, 2.6):
        got = band_fnu(sed, filt, z)[0]
        ws, fs = sed
        wf, tf = filt

        # direct integration on an independent, 10x finer grid
        lo, hi = wf[tf > 0].min() - 1, wf[tf > 0].max() + 1
        lam = np.linspace(lo, hi, 200_001)
        flam = np.interp(lam / (1 + z), ws, fs, left=0.0, right=0.0)
        t = np.interp(lam, wf, tf)
        num = np.trapezoid(flam * lam**2 * t / lam, lam)
        den = np.trapezoid(t / lam, lam)
        assert got == pytest.approx(num / den, rel=2e-4)


def test_madau_igm_dims_blueward_of_lyman_alpha():
    lam = np.array([1000.0, 3000.0, 5000.0, 8000.0])
    t = madau95_transmission(lam, 3.0)  # Ly alpha observed at 4863 A
    assert t[-1] == 1.0 and t[2] == 1.0
    assert t[0] < 0.2 and t[1] < 0.2  # below the redshifted Lyman limit (3647 A)
    # between Ly beta and Ly alpha (4103-4863 A) only the Ly alpha forest acts
    assert madau95_transmission(4500.0, 3.0) == pytest.approx(
        np.exp(-3.6e-3 * (4500 / 1215.67) ** 3.46), rel=1e-12
    )
    assert madau95_transmission(lam, 0.0)[1] == 1.0


def test_grid_layout_interpolation_and_speed():
    z = np.round(np.arange(0, 3.0001, 0.01), 2)
    t0 = time.perf_counter()
    g = build_template_grid(_seds(), _filters(), z, igm="madau95")
    dt = time.perf_counter() - t0
    assert dt < 20  # "seconds for 8 templates x 301 z x 6 filters"
    assert g.n_models == 8 * 301 and g.observable_names == [f"DC2LSST_{b}" for b in BANDS]
    assert g.target_names == ["z", "type"] and g.meta["igm"] == "madau95"
    np.testing.assert_array_equal(np.asarray(g.get_target("type"))[::301], np.arange(8))
    gi = build_template_grid(_seds()[:3], _filters(), z[:11], n_interp=2)
    types = np.unique(np.asarray(gi.get_target("type")))
    np.testing.assert_allclose(types, [0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2], atol=1e-6)
    obs = np.asarray(gi.observables, np.float64).reshape(7, 11, 6)
    np.testing.assert_allclose(obs[1], (2 / 3) * obs[0] + (1 / 3) * obs[3], rtol=1e-5)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_sed(tmp_path / "none.sed")
    with pytest.raises(ValueError, match="output"):
        build_template_grid(_seds()[:1], _filters()[:1], [0.1], output="jy")
    with pytest.raises(ValueError, match="`z`"):
        build_template_grid(_seds()[:1], _filters()[:1], [-1.0])
    with pytest.raises(ValueError, match="igm"):
        build_template_grid(_seds()[:1], _filters()[:1], [0.1], igm="inoue")


def test_descending_tuples_give_the_same_grid_as_ascending():
    w = np.linspace(1000, 20000, 3000)
    sed = (w, 1e-3 * w ** (-1.2) * (1 + 0.3 * np.sin(w / 700)))
    filters = [_tophat(4000, 5000), _tophat(6000, 7500)]
    up = build_template_grid([sed], filters, [0.0, 0.4, 1.1])
    down = build_template_grid(
        [(sed[0][::-1], sed[1][::-1])], [(f[0][::-1], f[1][::-1]) for f in filters], [0, 0.4, 1.1]
    )
    assert np.all(np.asarray(up.observables) > 0)
    np.testing.assert_array_equal(np.asarray(down.observables), np.asarray(up.observables))
    # shuffled samples too (np.interp needs increasing abscissae)
    order = np.random.default_rng(1).permutation(w.size)
    shuffled = build_template_grid([(sed[0][order], sed[1][order])], filters, [0.0, 0.4, 1.1])
    np.testing.assert_array_equal(np.asarray(shuffled.observables), np.asarray(up.observables))


def test_template_not_covering_a_filter_is_refused_naming_both():
    w = np.linspace(3000, 9000, 500)
    sed = (w, np.ones_like(w))
    ok = build_template_grid([sed], [_tophat(4000, 5000)], [0.0, 0.3])  # 3077-5000 A rest
    assert np.all(np.asarray(ok.observables) > 0)
    with pytest.raises(ValueError, match=r"template 'flat'.*filter 'red'.*\[0, 0\.3\]"):
        # at z = 0 the red band (8000-9500 A) runs past the template's 9000 A
        build_template_grid(
            [sed], [_tophat(4000, 5000), _tophat(8000, 9500)], [0.0, 0.3],
            filter_names=["blue", "red"], template_names=["flat"],
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"template 'template0'.*filter 'band0'"):
        # at z = 1 the blue band needs rest-frame 2000-2500 A, bluer than 3000 A
        build_template_grid([sed], [_tophat(4000, 5000)], [0.0, 1.0])
    # the bundled templates cover the bundled filters over the demo's redshift range
    g = build_template_grid(_seds(), _filters(), [0.0, 3.0])
    assert g.n_models == 16


def test_zero_throughput_filter_is_refused():
    w = np.linspace(3000, 9000, 500)
    dead = (np.linspace(4000, 5000, 50), np.zeros(50))
    with pytest.raises(ValueError, match="filter 'dead' has no positive transmission"):
        build_template_grid([(w, np.ones_like(w))], [dead], [0.1], filter_names=["dead"])
    with pytest.raises(ValueError, match="band_fnu: the filter has no positive transmission"):
        band_fnu((w, np.ones_like(w)), dead, [0.1])
