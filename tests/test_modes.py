"""Modes counted like a person would (`summaries.count_modes`), and where BESTA differs.

BESTA 0.6.2's `pdf_stats(find_multimodal=True)` (besta/postprocess.py) counts the
strict *interior* local maxima of the density and reports one mode when it finds
none. `besta_modes` restates that rule to show each deliberate difference.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from jaxgrid.core.reductions import MODE_FLOOR, count_modes, hist_stats

EDGES = np.linspace(0.0, 1.0, 41)
C = 0.5 * (EDGES[1:] + EDGES[:-1])


def besta_modes(density):
    d = np.asarray(density, float)
    n = sum(1 for i in range(1, d.size - 1) if d[i] > d[i - 1] and d[i] > d[i + 1])
    return max(n, 1)


def _gauss(mu, s):
    return np.exp(-0.5 * ((C - mu) / s) ** 2)


def _modes(density):
    got = int(count_modes(jnp.asarray(density, jnp.float32)))
    assert got == ref.count_modes(density)  # the documented rule, in float64
    return got


def test_unimodal_interior_and_edge_peaks():
    assert _modes(_gauss(0.5, 0.1)) == 1
    assert _modes(_gauss(0.0, 0.2)) == 1  # peak in the first bin
    assert _modes(_gauss(1.0, 0.2)) == 1  # peak in the last bin
    assert _modes(np.ones(40)) == 1  # flat: one plateau
    assert _modes(np.r_[np.zeros(20), np.ones(20)]) == 1  # a step up to the edge


def test_two_separated_peaks():
    assert _modes(_gauss(0.25, 0.05) + _gauss(0.75, 0.05)) == 2
    assert _modes(_gauss(0.3, 0.05) + 0.2 * _gauss(0.8, 0.05)) == 2  # unequal heights
    assert _modes(np.r_[1.0, 0.5, np.zeros(36), 0.5, 1.0]) == 2  # both at the edges
    # a plateau peak counts once, a shoulder (a plateau on the way up) not at all
    assert _modes(np.r_[0, 1, 2, 2, 2, 1, 0, 0, 3, 0]) == 2
    assert _modes(np.r_[0, 1, 2, 2, 3, 1, 0]) == 1


def test_float32_noise_never_adds_a_mode(rng):
    base = _gauss(0.4, 0.15)
    for _ in range(50):
        noisy = (base * (1 + rng.normal(0, 1e-6, base.size))).astype(np.float32)
        noisy[base < 1e-3] = rng.uniform(0, 1e-16, np.sum(base < 1e-3))  # residues
        assert _modes(noisy) == 1
        flat = np.float32(1 / 3) * (1 + rng.normal(0, 1e-7, 40)).astype(np.float32)
        assert _modes(flat) == 1


def test_hist_stats_counts_modes_on_the_density():
    # unequal bin widths: the density (not the mass) decides the modes
    edges = np.array([0.0, 0.1, 0.2, 0.6, 0.7])
    mass = np.array([1.0, 2.0, 4.0, 1.0])  # density 10, 20, 10, 10: one mode
    hs = hist_stats(jnp.asarray(mass), jnp.asarray(edges), True)
    assert int(hs.nmodes) == 1
    assert int(hist_stats(jnp.zeros(4), jnp.asarray(edges), True).nmodes) == -1


@pytest.mark.parametrize(
    "density,ours,besta,why",
    [
        (_gauss(0.5, 0.1), 1, 1, "same"),
        (_gauss(C[10], 0.05) + _gauss(C[30], 0.05), 2, 2, "same"),
        (_gauss(0.25, 0.05) + _gauss(0.75, 0.05), 2, 1, "BESTA: peaks split over two bins"),
        (_gauss(0.0, 0.1) + _gauss(0.7, 0.05), 2, 1, "BESTA misses the peak in the edge bin"),
        (np.r_[1.0, 0.5, np.zeros(36), 0.5, 1.0], 2, 1, "BESTA: two edge peaks count as one"),
        (_gauss(0.5, 0.05) + 1e-9 * (np.arange(40) % 2), 1, 6, "BESTA counts ripples of 1e-9"),
        (np.r_[0, 1, 2, 2, 1, 0], 1, 1, "a plateau peak: BESTA's fallback saves it"),
        (np.r_[0, 1, 2, 2, 1, 0, 1, 2, 2, 1, 0], 2, 1, "BESTA: two plateau peaks count as one"),
    ],
)
def test_against_besta_rule(density, ours, besta, why):
    assert _modes(density) == ours, why
    assert besta_modes(density) == besta, why
    assert MODE_FLOOR == 1e-3  # the documented floor


@pytest.mark.parametrize("nbins", [30, 300, 3000, 10000])
def test_mode_count_does_not_depend_on_binning(nbins):
    # a smooth bimodal density: tiny steps between fine bins must still add up
    c = np.linspace(0, 1, nbins)
    d = np.exp(-0.5 * ((c - 0.25) / 0.08) ** 2) + np.exp(-0.5 * ((c - 0.75) / 0.08) ** 2)
    assert _modes(d) == 2
    assert _modes(np.exp(-0.5 * ((c - 0.5) / 0.2) ** 2)) == 1
