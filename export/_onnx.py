"""PyTorch -> ONNX: torch's dynamo exporter, one self-contained file, dynamic batch axis.

The image encoder (pixels in) and the text tower (token tensors in) go through one path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tritonvision.contract import BATCH_AXIS, EMBEDDINGS_OUTPUT

from ._errors import OnnxExportError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch
    from torch import nn

    from ._encoders import EncoderFamily

__all__ = ["export_onnx", "export_text_onnx"]

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
    dummy = family.make_dummy_input(_DUMMY_BATCH, height, width, 0)
    (batch_axis,) = family.dynamic_axes[family.input_name].values()
    _export_graph(
        module,
        path,
        inputs={family.input_name: dummy},
        batch_axis=batch_axis,
        output_name=family.output_name,
        opset=family.opset,
        metadata=metadata,
        what=f"the {family.name} encoder",
    )


def export_text_onnx(
    module: nn.Module,
    path: Path,
    *,
    family: EncoderFamily,
    tokens: Mapping[str, npt.NDArray[np.int64]],
    metadata: Mapping[str, str],
) -> None:
    """Export a text tower (token tensors -> embeddings) to ``path``; check it like the encoder.

    ``tokens`` are real tokenised texts, INT64 ``[B, L]`` per token input in the order the
    module's ``forward`` takes them; the graph takes those names, only axis 0 dynamic (named
    ``BATCH_AXIS``), ``L`` fixed. Only the first :data:`_DUMMY_BATCH` rows are used.
    """
    import torch

    inputs = {name: torch.from_numpy(ids[:_DUMMY_BATCH].copy()) for name, ids in tokens.items()}
    if any(t.shape[0] != _DUMMY_BATCH for t in inputs.values()):
        raise ValueError(f"need {_DUMMY_BATCH} tokenised texts to export the text tower")
    _export_graph(
        module,
        path,
        inputs=inputs,
        batch_axis=BATCH_AXIS,
        output_name=EMBEDDINGS_OUTPUT,
        opset=family.opset,
        metadata=metadata,
        what=f"the {family.name} text tower",
    )


def _export_graph(
    module: nn.Module,
    path: Path,
    *,
    inputs: Mapping[str, torch.Tensor],
    batch_axis: str,
    output_name: str,
    opset: int,
    metadata: Mapping[str, str],
    what: str,
) -> None:
    import onnx
    import torch

    # One Dim object for every input: the inputs share the batch axis.
    batch = torch.export.Dim(batch_axis, min=1)
    dynamic_shapes = {name: {0: batch} for name in inputs}
    try:
        with _quiet_exporter_logs():
            program = torch.onnx.export(
                module,
                tuple(inputs.values()),
                dynamo=True,
                opset_version=opset,
                input_names=list(inputs),
                output_names=[output_name],
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
        problem = f"ONNX export of {what} failed: {type(exc).__name__}: {first_line}"
        raise OnnxExportError(problem, problems=[problem]) from exc
