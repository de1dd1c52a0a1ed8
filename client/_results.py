"""Result types of batch calls: every input gets an embedding row or an error, in order."""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tritonvision.errors import BatchError

__all__ = ["BatchEmbedding"]

_MAX_LISTED_ERRORS = 5


@dataclass(frozen=True)
class BatchEmbedding:
    """The outcome of ``batch_embed_images``.

    Attributes:
        embeddings: ``(N, D)`` float32, row ``i`` for input ``i``; failed rows are NaN.
        errors: input index -> exception, for the inputs that failed.
    """

    embeddings: npt.NDArray[np.float32]
    errors: Mapping[int, BaseException] = field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def ok(self) -> bool:
        """True when every input was embedded."""
        return not self.errors

    @property
    def failed_indices(self) -> list[int]:
        """Indices of the failed inputs, ascending."""
        return sorted(self.errors)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def __iter__(self) -> Iterator[npt.NDArray[np.float32] | BaseException]:
        """Each input's embedding row, or its exception, in input order."""
        for i in range(len(self)):
            err = self.errors.get(i)
            yield err if err is not None else self.embeddings[i]

    def raise_for_errors(self) -> None:
        """Raise :class:`BatchError` if any input failed; do nothing otherwise."""
        if not self.errors:
            return
        indices = self.failed_indices
        listed = "; ".join(
            f"[{i}] {type(self.errors[i]).__name__}: {self.errors[i]}"
            for i in indices[:_MAX_LISTED_ERRORS]
        )
        more = f"; ... {len(indices) - _MAX_LISTED_ERRORS} more" if len(indices) > 5 else ""
        raise BatchError(
            f"{len(indices)} of {len(self)} inputs failed: {listed}{more}", errors=self.errors
        ) from self.errors[indices[0]]
