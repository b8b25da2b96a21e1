"""The layout's rules, checked on the source: the device core imports nothing of the
host layer (and only jax, equinox, numpy, jaxtyping and the standard library),
`jaxgrid.prob` stays in the device world, and no import cycle exists anywhere
in jaxgrid — lazy imports included (see ``tests/import_graph.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from import_graph import boundary_violations, cycles, graph

import jaxgrid

ROOT = Path(jaxgrid.__file__).parent


def test_core_and_prob_import_only_the_device_world():
    assert boundary_violations(ROOT) == []


def test_no_import_cycle():
    assert cycles(ROOT) == []


def test_graph_sees_lazy_and_relative_imports():
    edges, _ = graph(ROOT)
    # a lazy import inside GridFitter.fit_batch, relative
    assert (
        "jaxgrid.batch.api" in edges["jaxgrid.fitter"] or "jaxgrid.batch" in edges["jaxgrid.fitter"]
    )
    # an import of a submodule implies its package
    assert {"jaxgrid.core.step", "jaxgrid.core.status"} <= edges["jaxgrid.batch.run"]


@pytest.fixture
def tree(tmp_path):
    """A copy of the package to break on purpose."""
    dst = tmp_path / "jaxgrid"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns("__pycache__", "data"))
    return dst


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + "\n" + text + "\n")


def test_a_host_import_in_the_core_is_caught_even_when_lazy(tree):
    _append(tree / "core" / "step.py", "def _late():\n    from ..fitter import GridFitter\n")
    bad = boundary_violations(tree)
    assert len(bad) == 1
    assert "jaxgrid.core.step imports jaxgrid.fitter" in bad[0]
    assert "core/step.py" in bad[0]


def test_a_third_party_import_in_the_core_is_caught(tree):
    _append(tree / "core" / "reductions.py", "import h5py")
    assert any("third-party h5py" in b for b in boundary_violations(tree))


def test_prob_importing_the_grid_is_caught(tree):
    _append(tree / "prob" / "priors.py", "from jaxgrid.grid import ModelGrid")
    assert any("jaxgrid.prob.priors imports jaxgrid.grid" in b for b in boundary_violations(tree))


def test_type_checking_imports_are_not_dependencies(tree):
    _append(
        tree / "core" / "data.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..grid import ModelGrid",
    )
    assert boundary_violations(tree) == []


def test_a_lazy_cycle_is_caught(tree):
    # grid -> grid_format already; grid_format -> grid (inside a function) closes a cycle
    _append(tree / "grid_format.py", "def _late():\n    from .grid import ModelGrid\n")
    found = cycles(tree)
    assert any({"jaxgrid.grid", "jaxgrid.grid_format"} <= set(c) for c in found)


def test_a_cycle_through_a_package_init_is_caught(tree):
    # io/__init__ imports io.grid_files, which imports grid: grid -> jaxgrid.io closes it
    _append(tree / "grid.py", "def _late():\n    from .io.catalog import read_catalog\n")
    found = cycles(tree)
    assert any({"jaxgrid.grid", "jaxgrid.io", "jaxgrid.io.grid_files"} <= set(c) for c in found)
