"""Shape and dtype checks of every chunk step the test suite runs.

`ChunkOutput`'s fields carry jaxtyping annotations (``Float[Array, "rows targets"]``
...). `check_chunk_output` checks an output against all of them at once with
beartype, so that a dimension name means one size across the fields of a chunk
(``rows``, ``targets``, ``list``, ``pool``). The session fixture in ``conftest.py``
wraps the step the batch runner calls, so every fit of the suite is checked.
"""

from __future__ import annotations

import dataclasses
import typing

from beartype import beartype
from jaxtyping import jaxtyped

from jaxgrid.core.step import ChunkOutput


def _make_checker():
    """A function with one parameter per `ChunkOutput` field, annotated like it."""
    hints = typing.get_type_hints(ChunkOutput, include_extras=True)
    names = [f.name for f in dataclasses.fields(ChunkOutput)]
    src = f"def check({', '.join(names)}):\n    return None\n"
    space: dict = {}
    exec(src, space)  # noqa: S102 - a signature built from the dataclass fields
    fn = space["check"]
    fn.__annotations__ = {n: hints[n] for n in names}
    return jaxtyped(typechecker=beartype)(fn)


_CHECK = _make_checker()
CHECKED = {"steps": 0}


def check_chunk_output(out: ChunkOutput) -> ChunkOutput:
    """``out`` if every field matches its annotation (one size per dimension name),
    else a jaxtyping/beartype error naming the field."""
    _CHECK(**{f.name: getattr(out, f.name) for f in dataclasses.fields(ChunkOutput)})
    CHECKED["steps"] += 1
    return out


def checked_step(step):
    """``step`` (a `chunk_step`) whose every output is checked."""

    def run(*args, **kwargs):
        return check_chunk_output(step(*args, **kwargs))

    run.__wrapped__ = step
    return run
