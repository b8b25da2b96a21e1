"""One place that turns astropy's low-level FITS failures into errors naming the file."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

#: astropy warns (and reads on) when a file is cut short; these words mark such warnings
_DAMAGE = ("truncated", "corrupted", "not multiple of 2880", "extra bytes")


@contextlib.contextmanager
def fits_read_errors(path: str | Path, who: str) -> Iterator[None]:
    """Run a FITS read; a truncated or corrupt file raises ``ValueError`` naming ``path``.

    astropy reports a cut-short file as a warning and then fails deep inside NumPy
    ("buffer is too small for requested array", "cannot reshape array"), or finds no
    table HDU at all. Other warnings are passed on unchanged.
    """
    damaged: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except (TypeError, ValueError, OSError, IndexError, KeyError, EOFError) as err:
            damaged = [str(w.message) for w in caught if _is_damage(w)]
            # "No SIMPLE card", or a cut-short .fits.gz
            not_fits = isinstance(err, EOFError) or (isinstance(err, OSError) and err.errno is None)
            if not (damaged or not_fits):
                raise  # a missing file, a missing HDU of a sound file, ...: already clear
            why = " ".join((damaged[0] if damaged else str(err)).split())
            raise ValueError(
                f"{who}: cannot read {path} as FITS; the file is truncated or corrupt "
                f"({why}). Write it again."
            ) from err
    damaged = [str(w.message) for w in caught if _is_damage(w)]
    if damaged:
        raise ValueError(
            f"{who}: {path} is truncated or corrupt ({' '.join(damaged[0].split())}). "
            "Write it again."
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _is_damage(w: warnings.WarningMessage) -> bool:
    text = str(w.message)
    return any(word in text for word in _DAMAGE)
