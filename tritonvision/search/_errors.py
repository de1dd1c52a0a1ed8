"""The search app's errors, in the one tree under :class:`TritonVisionError`::

TritonVisionError
└── InvalidInput (ValueError)
    ├── IndexFileError        the index files are missing, unreadable or disagree (``path``)
    └── DimensionMismatch     the query's length is not the index's D (``expected``, ``got``)

Both are bad input (``tritonvision search`` exits 2), so they derive from
:class:`~tritonvision.errors.InvalidInput`: one ``except ValueError`` catches them too.
"""

from __future__ import annotations

from pathlib import Path

from tritonvision.errors import InvalidInput

__all__ = ["DimensionMismatch", "IndexFileError"]


class IndexFileError(InvalidInput):
    """An index file is missing, unreadable, or disagrees with its partner file.

    ``path`` is the file at fault (also ``source``), so a caller can point at it.
    """

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message, source=path)
        self.path = path


class DimensionMismatch(InvalidInput):
    """The query vector's length is not the index's embedding dimension.

    Usually the query was embedded by another model than the one that built the index.
    ``expected`` is the index's D, ``got`` the query's length.
    """

    def __init__(self, message: str, *, path: Path, expected: int, got: int) -> None:
        super().__init__(message, source=path)
        self.path = path
        self.expected = expected
        self.got = got
