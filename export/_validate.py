"""Check an exported ONNX model against the PyTorch module it came from.

The image encoder (:func:`validate_onnx`, seeded pixels) and the text tower
(:func:`validate_text_onnx`, real tokenised texts) go through the same checks.
Structure first (self-contained file, opset, input/output names, types, named dynamic batch axis,
fixed dims), then values with ONNX Runtime at each batch size: shape, finiteness, max abs diff and
min cosine within the family's tolerance, unit norm when normalised. Any failure raises
:class:`ExportValidationError` with the figures; nothing is downgraded to a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonvision.contract import BATCH_AXIS, EMBEDDINGS_OUTPUT

from ._errors import ExportValidationError
from ._reports import Tolerance, ValidationReport

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from torch import nn

    from ._encoders import EncoderFamily

__all__ = ["compare_embeddings", "row_cosines", "validate_onnx", "validate_text_onnx"]

_UNIT_NORM_ATOL = 1e-4


def row_cosines(candidate: npt.NDArray[Any], reference: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The cosine of each row pair of two [N, D] arrays, in float64."""
    import numpy as np

    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosines: npt.NDArray[Any] = np.sum(a * b, axis=-1) / np.maximum(
        norms, np.finfo(np.float64).tiny
    )
    return cosines


def compare_embeddings(
    candidate: npt.NDArray[Any], reference: npt.NDArray[Any], tolerance: Tolerance
) -> tuple[float, float, bool]:
    """(max abs diff, min row cosine, within tolerance) of two [N, D] arrays of equal shape."""
    import numpy as np

    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape {a.shape} != reference shape {b.shape}")
    if not np.all(np.isfinite(a)):
        return float("inf"), float("nan"), False
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    cosines = row_cosines(a, b)
    min_cos = float(cosines.min()) if cosines.size else 1.0
    close = bool(np.all(diff <= tolerance.atol + tolerance.rtol * np.abs(b)))
    return max_abs, min_cos, close and min_cos >= tolerance.min_cosine


def _dims(value_info: Any) -> list[int | str]:
    return [
        d.dim_param if d.HasField("dim_param") else d.dim_value
        for d in value_info.type.tensor_type.shape.dim
    ]


# (name, ONNX element type, dims after the batch axis)
_Tensor = tuple[str, int, Sequence[int]]


def _graph_problems(
    path: Path,
    *,
    opset: int,
    inputs: Sequence[_Tensor],
    outputs: Sequence[_Tensor],
    batch_axis: str = BATCH_AXIS,
) -> list[str]:
    """Self-contained file, pinned opset, exact input/output names, types and dims (axis 0
    the named dynamic batch axis, the rest fixed)."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load(str(path), load_external_data=False)
    problems: list[str] = []
    tensors = [*model.graph.initializer]
    tensors += [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    external = [t.name for t in tensors if external_data_helper.uses_external_data(t)]
    if external:
        problems.append(f"weights stored outside model.onnx: {', '.join(external[:3])}")
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != opset:
        problems.append(f"opset {opsets} does not pin ai.onnx {opset}")

    got_inputs, got_outputs = list(model.graph.input), list(model.graph.output)
    for kind, got, want in (("inputs", got_inputs, inputs), ("outputs", got_outputs, outputs)):
        if [v.name for v in got] != [name for name, _, _ in want]:
            problems.append(f"{kind} {[v.name for v in got]} != {[name for name, _, _ in want]}")
    if problems:
        return problems

    for value_info, (name, elem_type, fixed_dims) in zip(
        [*got_inputs, *got_outputs], [*inputs, *outputs], strict=True
    ):
        got_type = value_info.type.tensor_type.elem_type
        if got_type != elem_type:
            problems.append(
                f"{name}: type {onnx.TensorProto.DataType.Name(got_type)} != "
                f"{onnx.TensorProto.DataType.Name(elem_type)}"
            )
        want_dims = [batch_axis, *fixed_dims]
        if _dims(value_info) != want_dims:
            problems.append(f"{name}: dims {_dims(value_info)} != {want_dims}")
    return problems


def _raise_on_structure(path: Path, problems: list[str]) -> None:
    """A graph that is not the contract fails before any value is compared."""
    if problems:
        raise ExportValidationError(
            f"{path.name} failed validation: " + "; ".join(problems), problems=problems
        )


def _output_problem(batch: int, got: npt.NDArray[Any], embedding_dim: int) -> str | None:
    """What is wrong with one run's output, when it is not fp32 [batch, D]."""
    import numpy as np

    if got.shape != (batch, embedding_dim) or got.dtype != np.float32:
        return (
            f"batch {batch}: output {got.dtype}{list(got.shape)} != float32{[batch, embedding_dim]}"
        )
    return None


def _compare_batch(
    batch: int,
    got: npt.NDArray[Any],
    expected: npt.NDArray[Any],
    *,
    tolerance: Tolerance,
    normalized: bool,
    problems: list[str],
) -> ValidationReport:
    """The report of one batch size (``got``: fp32 [N, D]); its misses appended to ``problems``."""
    import numpy as np

    max_abs, min_cos, passed = compare_embeddings(got, expected, tolerance)
    report = ValidationReport(
        batch_size=batch,
        output_shape=(batch, got.shape[1]),
        max_abs_diff=max_abs,
        min_cosine=min_cos,
        tolerance=tolerance,
        passed=passed,
    )
    if not passed:
        problems.append(report.describe())
    if normalized:
        norm_err = float(np.abs(np.linalg.norm(got.astype(np.float64), axis=-1) - 1.0).max())
        if not norm_err <= _UNIT_NORM_ATOL:
            problems.append(f"batch {batch}: embeddings not unit length (|norm-1| {norm_err:.3g})")
    return report


def _validated(
    what: str, problems: list[str], reports: list[ValidationReport]
) -> tuple[ValidationReport, ...]:
    """The reports, or every problem at once in one :class:`ExportValidationError`."""
    if problems:
        raise ExportValidationError(
            f"{what} does not match PyTorch: " + "; ".join(problems),
            problems=problems,
            reports=reports,
        )
    return tuple(reports)


def _structure_problems(
    path: Path, *, family: EncoderFamily, height: int, width: int, embedding_dim: int
) -> list[str]:
    import onnx

    return _graph_problems(
        path,
        opset=family.opset,
        inputs=[(family.input_name, onnx.TensorProto.UINT8, [height, width, 3])],
        outputs=[(family.output_name, onnx.TensorProto.FLOAT, [embedding_dim])],
        batch_axis=family.dynamic_axes[family.input_name][0],
    )


def validate_onnx(
    path: Path,
    reference: nn.Module,
    *,
    family: EncoderFamily,
    height: int,
    width: int,
    embedding_dim: int,
    normalized: bool,
    tolerance: Tolerance,
    batch_sizes: Sequence[int] = (1, 3),
) -> tuple[ValidationReport, ...]:
    """Validate ``path`` against ``reference``; raise :class:`ExportValidationError` on any miss."""
    import onnxruntime as ort
    import torch

    problems = _structure_problems(
        path, family=family, height=height, width=width, embedding_dim=embedding_dim
    )
    _raise_on_structure(path, problems)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reports: list[ValidationReport] = []
    for seed, batch in enumerate(batch_sizes, start=1):
        pixels = family.make_dummy_input(batch, height, width, seed)
        with torch.no_grad():
            expected: npt.NDArray[np.float32] = reference(pixels).numpy()
        (got,) = session.run([family.output_name], {family.input_name: pixels.numpy()})
        wrong = _output_problem(batch, got, embedding_dim)
        if wrong is not None:
            problems.append(wrong)
            continue
        reports.append(
            _compare_batch(
                batch, got, expected, tolerance=tolerance, normalized=normalized, problems=problems
            )
        )
    return _validated(path.name, problems, reports)


def validate_text_onnx(
    path: Path,
    reference: nn.Module,
    *,
    family: EncoderFamily,
    tokens: Mapping[str, npt.NDArray[np.int64]],
    context_length: int,
    embedding_dim: int,
    normalized: bool,
    tolerance: Tolerance,
    batch_sizes: Sequence[int] = (1, 3),
) -> tuple[ValidationReport, ...]:
    """Validate a text tower at ``path`` against ``reference``; raise
    :class:`ExportValidationError` on any miss.

    ``tokens``: tokenised texts, INT64 ``[T, L]`` per token input in the graph's order. At each
    batch size every text is run, in consecutive batches of that size (the last one wrapping
    round to the first texts), and the report gives the worst figures over all of them.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    names = list(tokens)
    fixed = [context_length]
    problems = _graph_problems(
        path,
        opset=family.opset,
        inputs=[(name, onnx.TensorProto.INT64, fixed) for name in names],
        outputs=[(EMBEDDINGS_OUTPUT, onnx.TensorProto.FLOAT, [embedding_dim])],
    )
    _raise_on_structure(path, problems)

    count = len(tokens[names[0]])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reports: list[ValidationReport] = []
    for batch in batch_sizes:
        got_rows: list[npt.NDArray[np.float32]] = []
        expected_rows: list[npt.NDArray[np.float32]] = []
        for start in range(0, count, batch):
            rows = [(start + i) % count for i in range(batch)]
            feed = {name: np.ascontiguousarray(tokens[name][rows]) for name in names}
            with torch.no_grad():
                expected = reference(*(torch.from_numpy(feed[name]) for name in names)).numpy()
            (got,) = session.run([EMBEDDINGS_OUTPUT], feed)
            wrong = _output_problem(batch, got, embedding_dim)
            if wrong is not None:
                problems.append(wrong)
                break
            got_rows.append(got)
            expected_rows.append(expected)
        if len(got_rows) * batch < count:
            continue
        reports.append(
            _compare_batch(
                batch,
                np.concatenate(got_rows),
                np.concatenate(expected_rows),
                tolerance=tolerance,
                normalized=normalized,
                problems=problems,
            )
        )
    return _validated(f"{path.name} (text tower)", problems, reports)
