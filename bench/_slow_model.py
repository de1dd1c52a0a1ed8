"""A python-backend encoder that sleeps per execute: a server that is slow on purpose.

Scenario 8 serves it behind a queue of one so that Triton answers 503 "queue full" under
load; the fault tests (``tests/e2e/test_client_faults.py``, ``tests/e2e/test_client_overload.py``)
use the same model. It publishes a :class:`~tritonvision.contract.PreprocessSpec` like an
exported encoder, so our client preprocesses for it as for any other model, and embeds an
image as its channel means, tiled to 16 values. Configs are written through
``model_config_pb2`` + ``text_format``.
"""

from __future__ import annotations

from pathlib import Path

from tritonvision.contract import (
    EMBEDDINGS_OUTPUT,
    PARAM_PREPROCESSING,
    PIXELS_INPUT,
    PreprocessSpec,
)

__all__ = [
    "DELAY_PARAMETER",
    "SLOW_MODEL_DIM",
    "SLOW_MODEL_PY",
    "SLOW_MODEL_SPEC",
    "SLOW_MODEL_SPEC_JSON",
    "slow_model_config",
    "write_slow_model",
]

# The model's own config parameter: seconds it sleeps per execute.
DELAY_PARAMETER = "test.delay_s"
SLOW_MODEL_DIM = 16
# 32 x 32 RGB uint8 NHWC, the tiny CLIP's preprocessing shape.
SLOW_MODEL_SPEC = PreprocessSpec(resize_mode="exact", resize_height=32, resize_width=32)
SLOW_MODEL_SPEC_JSON = SLOW_MODEL_SPEC.to_json()

SLOW_MODEL_PY = f'''\
"""Test-only python-backend encoder: sleeps per execute, embeds by channel means."""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {{}})
        self.delay_s = float(params["{DELAY_PARAMETER}"]["string_value"])
        self.dim = int(config["output"][0]["dims"][0])

    def execute(self, requests):
        time.sleep(self.delay_s)
        responses = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "{PIXELS_INPUT}").as_numpy()
            out = pb_utils.Tensor("{EMBEDDINGS_OUTPUT}", embed(pixels, self.dim))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses


def embed(pixels, dim):
    means = pixels.reshape(len(pixels), -1, 3).astype(np.float32).mean(axis=1) / 255.0
    return np.ascontiguousarray(np.tile(means, (1, dim // 3 + 1))[:, :dim], dtype=np.float32)
'''


def slow_model_config(
    name: str,
    spec_json: str = SLOW_MODEL_SPEC_JSON,
    *,
    delay_s: float,
    queue: int | None,
) -> str:
    """``config.pbtxt`` text: batch 1, one instance, ``queue`` places (None: unbounded)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    height, width, channels = PreprocessSpec.from_json(spec_json).output_shape
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=1)
    cfg.input.add(name=PIXELS_INPUT, data_type=mc.TYPE_UINT8, dims=[height, width, channels])
    cfg.output.add(name=EMBEDDINGS_OUTPUT, data_type=mc.TYPE_FP32, dims=[SLOW_MODEL_DIM])
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    batching = cfg.dynamic_batching
    if queue is not None:
        batching.default_queue_policy.max_queue_size = queue
    else:
        batching.SetInParent()
    cfg.parameters[PARAM_PREPROCESSING].string_value = spec_json
    cfg.parameters[DELAY_PARAMETER].string_value = str(delay_s)
    return text_format.MessageToString(cfg)


def write_slow_model(
    repository: Path,
    name: str,
    *,
    delay_s: float,
    queue: int | None,
    spec_json: str = SLOW_MODEL_SPEC_JSON,
) -> Path:
    """Add the slow model as ``repository/name`` (the repository is made if missing)."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.py").write_text(SLOW_MODEL_PY)
    (model_dir / "config.pbtxt").write_text(
        slow_model_config(name, spec_json, delay_s=delay_s, queue=queue)
    )
    return model_dir
