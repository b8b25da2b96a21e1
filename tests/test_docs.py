"""The README's and docs' code runs as written; the docs build, reference real API
names and embed their figures."""

import html
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCED = re.compile(r"^```.*?^```", flags=re.S | re.M)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "fit.h5").exists()
    assert len(namespace["table"]) == 5_000


def test_docs_site_builds_strict(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "fit_batch" in api and "KDTreeBinner" in api  # the reference is generated

    from jaxgrid.core.status import Status

    status = api[api.index('id="jaxgrid.core.status.Status"') :]
    status = status[: status.index('id="jaxgrid.core.step.chunk_step"')]
    status = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", status)))
    # every flag (OK too) rendered with its value and its line of docs
    for flag in Status.__members__.values():
        assert f"{flag.name} = {int(flag)}" in status, flag.name
    assert "every model has zero posterior weight" in status
    for name in ("read_sed", "read_filter", "pit_ks", "pit_cvm", "zphot_vs_ztrue", "Columns"):
        assert re.search(rf'id="jaxgrid\.[\w.]*\.{name}"', api), name
    assert (tmp_path / "site" / "figures" / "zphot_vs_ztrue.png").exists()


def test_docs_strict_build_catches_broken_links(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "docs" / "howto.md").write_text("# x\n\nSee [nowhere](missing.md).\n")
    cfg = (ROOT / "mkdocs.yml").read_text()
    cfg = cfg.replace("paths: [.]", f"paths: [{ROOT}]")
    (tmp_path / "mkdocs.yml").write_text(cfg)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode != 0 and "missing.md" in proc.stdout + proc.stderr


def test_index_five_minutes_runs(tmp_path, monkeypatch):
    """docs/index.md's example is self-contained and runs as written."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "index.md").read_text(), re.S)
    assert blocks, "docs/index.md has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/index.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "fit.h5").exists() and len(namespace["table"]) == 500


def _resolve(name: str):
    """The object a dotted ``jaxgrid.x.y`` name refers to (module prefix, then attributes)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)  # AttributeError: the name does not exist
        return obj
    raise ModuleNotFoundError(name)


def _api_names(text: str) -> set[str]:
    """``jaxgrid.x.y`` names inside inline code (`...`) of a Markdown page."""
    inline = re.findall(r"`([^`\n]+)`", FENCED.sub("", text))
    # not a name inside another dotted name (rail.estimation.algos.jaxgrid.X) or a string
    pattern = r"(?<![\w.\"'])jaxgrid\.[\w.]+"
    return {n.rstrip(".") for span in inline for n in re.findall(pattern, span)}


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_docs_api_names_resolve(page):
    """Every `jaxgrid.xxx` name a page quotes is a real object (so the docs do not
    point at renamed or removed API)."""
    missing = []
    for name in sorted(_api_names(page.read_text())):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as err:
            missing.append(f"{name} ({type(err).__name__}: {err})")
    assert not missing, f"{page.name} quotes names that do not exist: {missing}"


def test_api_name_check_catches_a_wrong_name():
    assert _api_names("see `jaxgrid.metrics.pit_ks(pit)` and\n```\njaxgrid.nope\n```") == {
        "jaxgrid.metrics.pit_ks"
    }
    assert _api_names('`rail.estimation.algos.jaxgrid.JaxgridInformer`, `"jaxgrid.kind"`') == set()
    assert _api_names("`(jaxgrid.nope)`") == {"jaxgrid.nope"}
    _resolve("jaxgrid.metrics.pit_ks")
    with pytest.raises(AttributeError):
        _resolve("jaxgrid.metrics.pit_kss")
    with pytest.raises(AttributeError):
        _resolve("jaxgrid.plots.zphot_vs_ztrue.nope")


def test_docs_figures_exist_are_small_and_used():
    """Every image a page embeds exists; the figures (docs/figures/make_figures.py) are
    PNGs under 150 kB, each embedded somewhere."""
    used = set()
    for page in DOCS:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.name} embeds missing {target}"
            used.add(path)
    figures = sorted((ROOT / "docs" / "figures").glob("*.png"))
    assert len(figures) >= 4
    for fig in figures:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig.name
        assert fig.stat().st_size < 150_000, f"{fig.name}: {fig.stat().st_size} bytes"
        assert fig.resolve() in used, f"{fig.name} is embedded on no page"
