"""PyTorch -> ONNX: torch's dynamo exporter, one self-contained file, dynamic batch axis."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import OnnxExportError

if TYPE_CHECKING:
    from torch import nn

    from ._encoders import EncoderFamily

__all__ = ["export_onnx"]

# Loggers the exporter is chatty on at WARNING for things that are not problems here
# ("torchvision is not installed", "Skipping constant folding for op Split").
_NOISY_LOGGERS = (
    "torch.onnx._internal.exporter._registration",
    "onnxscript.optimizer._constant_folding",
)
# The dummy batch must not be 1: torch.export would specialise the batch axis to the constant.
_DUMMY_BATCH = 2


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    module: nn.Module,
    path: Path,
    *,
    family: EncoderFamily,
    height: int,
    width: int,
    metadata: Mapping[str, str],
) -> None:
    """Export ``module`` (pixels -> embeddings) to ``path`` and run the ONNX checker on it.

    The weights go inside the one file (``external_data=False``): the largest encoder here
    (ViT-B/32 fp32, ~350 MB) is far below protobuf's 2 GB limit, and Triton's model directory
    then holds exactly ``model.onnx``.
    """
    import onnx
    import torch

    dummy = family.make_dummy_input(_DUMMY_BATCH, height, width, 0)
    (batch_axis,) = family.dynamic_axes[family.input_name].values()
    dynamic_shapes = {family.input_name: {0: torch.export.Dim(batch_axis, min=1)}}
    try:
        with _quiet_exporter_logs():
            program = torch.onnx.export(
                module,
                (dummy,),
                dynamo=True,
                opset_version=family.opset,
                input_names=[family.input_name],
                output_names=[family.output_name],
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        if program is None:  # only None when `f` is given; keeps the type checker honest
            raise RuntimeError("torch.onnx.export returned no program")
        program.model.metadata_props.update(metadata)
        program.save(path, external_data=False)
        # A path (not a loaded proto) lets the checker handle any size.
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # the exporter raises many kinds; each means "no ONNX model"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        problem = f"ONNX export of the {family.name} encoder failed: {type(exc).__name__}: "
        problem += first_line
        raise OnnxExportError(problem, problems=[problem]) from exc
