"""Check an exported ONNX model against the PyTorch module it came from.

Structure first (self-contained file, opset, input/output names, types, named dynamic batch axis,
fixed dims), then values with ONNX Runtime at each batch size: shape, finiteness, max abs diff and
min cosine within the family's tolerance, unit norm when normalised. Any failure raises
:class:`ExportValidationError` with the figures; nothing is downgraded to a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ExportValidationError
from ._reports import Tolerance, ValidationReport

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from torch import nn

    from ._encoders import EncoderFamily

__all__ = ["compare_embeddings", "row_cosines", "validate_onnx"]

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


def _structure_problems(
    path: Path, *, family: EncoderFamily, height: int, width: int, embedding_dim: int
) -> list[str]:
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
    if opsets.get("", opsets.get("ai.onnx")) != family.opset:
        problems.append(f"opset {opsets} does not pin ai.onnx {family.opset}")

    inputs, outputs = list(model.graph.input), list(model.graph.output)
    if [i.name for i in inputs] != [family.input_name]:
        problems.append(f"inputs {[i.name for i in inputs]} != [{family.input_name!r}]")
    if [o.name for o in outputs] != [family.output_name]:
        problems.append(f"outputs {[o.name for o in outputs]} != [{family.output_name!r}]")
    if problems:
        return problems

    expected = {
        family.input_name: (inputs[0], onnx.TensorProto.UINT8, [height, width, 3]),
        family.output_name: (outputs[0], onnx.TensorProto.FLOAT, [embedding_dim]),
    }
    for name, (value_info, elem_type, fixed_dims) in expected.items():
        got_type = value_info.type.tensor_type.elem_type
        if got_type != elem_type:
            problems.append(
                f"{name}: type {onnx.TensorProto.DataType.Name(got_type)} != "
                f"{onnx.TensorProto.DataType.Name(elem_type)}"
            )
        want = [family.dynamic_axes[name][0], *fixed_dims]
        if _dims(value_info) != want:
            problems.append(f"{name}: dims {_dims(value_info)} != {want}")
    return problems


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
    import numpy as np
    import onnxruntime as ort
    import torch

    problems = _structure_problems(
        path, family=family, height=height, width=width, embedding_dim=embedding_dim
    )
    if problems:
        raise ExportValidationError(
            f"{path.name} failed validation: " + "; ".join(problems), problems=problems
        )

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reports: list[ValidationReport] = []
    for seed, batch in enumerate(batch_sizes, start=1):
        pixels = family.make_dummy_input(batch, height, width, seed)
        with torch.no_grad():
            expected: npt.NDArray[np.float32] = reference(pixels).numpy()
        (got,) = session.run([family.output_name], {family.input_name: pixels.numpy()})
        if got.shape != (batch, embedding_dim) or got.dtype != np.float32:
            problems.append(
                f"batch {batch}: output {got.dtype}{list(got.shape)} != "
                f"float32{[batch, embedding_dim]}"
            )
            continue
        max_abs, min_cos, passed = compare_embeddings(got, expected, tolerance)
        report = ValidationReport(
            batch_size=batch,
            output_shape=tuple(got.shape),
            max_abs_diff=max_abs,
            min_cosine=min_cos,
            tolerance=tolerance,
            passed=passed,
        )
        reports.append(report)
        if not passed:
            problems.append(report.describe())
        if normalized:
            norm_err = float(np.abs(np.linalg.norm(got.astype(np.float64), axis=-1) - 1.0).max())
            if not norm_err <= _UNIT_NORM_ATOL:
                problems.append(
                    f"batch {batch}: embeddings not unit length (|norm-1| {norm_err:.3g})"
                )
    if problems:
        raise ExportValidationError(
            f"{path.name} does not match PyTorch: " + "; ".join(problems),
            problems=problems,
            reports=reports,
        )
    return tuple(reports)
