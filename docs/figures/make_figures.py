"""Make the figures of docs/photoz.md from the bundled DC2 sample (real data).

    python docs/figures/make_figures.py        # writes docs/figures/*.png

The recipe is the bundled demo's (`jaxgrid.demo.photoz_setup`, `run_photoz_demo`):
8 templates with 5 interpolated between each pair, z = 0..3 (dz = 0.01), Madau
IGM, profile amplitude, zero-flux non-detections, 0.1 mag floor, BPZ HDF-N
prior on i. Each PNG is kept under 150 kB (tests/test_docs.py checks it).
About 15 s on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script writing files: no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxgrid.demo import PHOTOZ_EDGES, photoz_fit, photoz_setup  # noqa: E402
from jaxgrid.metrics import pit_from_binned  # noqa: E402
from jaxgrid.plots import pit_histogram, plot_posterior_over_target, zphot_vs_ztrue  # noqa: E402

HERE = Path(__file__).parent
DPI = 110


def main() -> None:
    grid, F, SF, upper, z_true, _ = photoz_setup(n_interp=5)
    fit = photoz_fit(grid, F, SF, upper)
    zmode, pdf, fitter, edges = fit["zmode"], fit["pdf"], fit["fitter"], PHOTOZ_EDGES
    pit = pit_from_binned(edges, pdf, z_true)

    ax = zphot_vs_ztrue(z_true, zmode, zmax=3.0)  # 10,225 objects: hexbin density
    ax.set_title("DC2, 10,225 galaxies (z_mode)")
    ax.figure.savefig(HERE / "zphot_vs_ztrue.png", dpi=DPI)
    plt.close(ax.figure)

    ax, _, _ = pit_histogram(pit, bins=25)
    ax.set_title("PIT of the z PDFs, DC2")
    ax.figure.savefig(HERE / "pit.png", dpi=DPI)
    plt.close(ax.figure)

    # three galaxies' p(z): a narrow, a broad and a bimodal posterior
    centres = 0.5 * (edges[1:] + edges[:-1])
    mass = pdf * np.diff(edges)
    peak = mass.max(1)
    second = np.sort(mass, 1)[:, -20]  # mass well away from the single top bin
    picks = [int(np.argmax(peak)), int(np.argmin(np.abs(peak - np.median(peak))))]
    picks.append(int(np.argmax(second * (peak < 0.2))))
    fig = plt.figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for k, i in enumerate(picks):
        plot_posterior_over_target(pdf[i], centres, ax=ax, label=f"galaxy {i}")
        ax.axvline(z_true[i], color=f"C{k}", ls=":", lw=1.2)
    ax.set_xlabel("z")
    ax.set_xlim(0, 2)
    ax.set_title("p(z | photometry); dotted: true z")
    fig.savefig(HERE / "pz.png", dpi=DPI)
    plt.close(fig)

    # corner plot of the broad galaxy: z and template type (5 interpolated per pair)
    i = picks[1]
    # bins centred on the grid's redshifts (steps of 0.01), around the posterior
    z_lo = max(0.0, float(centres[np.cumsum(mass[i]) > 0.002][0]) - 0.05)
    z_hi = min(3.0, float(centres[np.cumsum(mass[i]) < 0.998][-1]) + 0.05)
    z_edges = np.round(np.arange(z_lo - 0.005, z_hi + 0.01, 0.01), 6)
    step = 1.0 / 6.0  # the type grid's spacing
    type_edges = np.arange(-step / 2, 7 + step, step)
    fig, _, _ = fitter.corner_for_targets(
        F[i],
        SF[i],
        ["z", "type"],
        true_target_vals=[z_true[i], None],
        bins=[z_edges, type_edges],
        upper_limits=upper[i],
    )
    fig.savefig(HERE / "corner.png", dpi=DPI)
    plt.close(fig)

    for path in sorted(HERE.glob("*.png")):
        print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
