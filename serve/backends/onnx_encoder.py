"""Triton python-backend model that runs an ONNX file through ONNX Runtime.

Used only by the embedded server (``tritonvision serve``): the wheel's tritonserver has
no onnxruntime backend, so the runtime repository points this model at the very
``model.onnx`` that Triton's onnxruntime backend loads in production. The execution
providers come from the config parameter ``tritonvision.ort_providers`` (absent: CPU only);
on a ``KIND_GPU`` instance the GPU providers are pinned to the instance's device, and a
provider that does not come up fails the load instead of silently running on the CPU.
Triton's dynamic batcher hands ``execute`` several requests at once; we run them as ONE
ONNX Runtime call (that is where batching pays) and split the result back per request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

from tritonvision.contract import PARAM_ONNX_FILE, PARAM_ORT_PROVIDERS, PARAM_ORT_THREADS
from tritonvision.serve._device import (
    CPU_PROVIDER,
    check_providers,
    parse_providers,
    providers_for_instance,
)
from tritonvision.serve.backends._stub import config_parameter, log_info

_NP_FROM_TRITON = {
    "TYPE_UINT8": np.uint8,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        onnx_name = config_parameter(config, PARAM_ONNX_FILE, "model.onnx")
        path = Path(args["model_repository"]) / args["model_version"] / onnx_name
        # The environment (an operator's explicit choice) wins over the derived config value.
        threads = os.environ.get("TRITONVISION_ORT_THREADS") or config_parameter(
            config, PARAM_ORT_THREADS
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
        # One Triton instance = one inference at a time; inter-op threads would only contend.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning workers burn the cores the other instance and the stubs need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers_for_instance(
            parse_providers(config_parameter(config, PARAM_ORT_PROVIDERS)),
            kind=args.get("model_instance_kind", "CPU"),
            device_id=int(args.get("model_instance_device_id", "0") or 0),
        )
        names = [name for name, _ in providers]
        if names != [CPU_PROVIDER] and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu >= 1.21: load the pip-installed CUDA/cuDNN libraries. Best
            # effort: system-wide CUDA libraries serve as well, and the check below is loud.
            try:
                ort.preload_dlls()
            except Exception as exc:
                log_info(f"{self.model_name}: onnxruntime.preload_dlls() failed: {exc}")
        try:
            check_providers(names, ort.get_available_providers(), ort.__version__)
            self.session = ort.InferenceSession(
                str(path),
                sess_options=options,
                providers=names,
                provider_options=[opts for _, opts in providers],
            )
            # ONNX Runtime falls back to the CPU when a GPU provider fails to initialise
            # (missing CUDA libraries): a GPU model must not quietly run on the CPU.
            active = self.session.get_providers()
            if names[0] not in active:
                raise RuntimeError(
                    f"{names[0]} did not start (active: {', '.join(active)}); see the "
                    "ONNX Runtime messages above"
                )
        except Exception as exc:
            raise pb_utils.TritonModelException(f"{self.model_name}: {exc}") from exc
        log_info(
            f"{self.model_name}: ONNX Runtime providers {', '.join(active)} "
            f"(instance {args.get('model_instance_name', '?')})"
        )
        self.inputs = [(i["name"], _NP_FROM_TRITON[i["data_type"]]) for i in config["input"]]
        self.outputs = [(o["name"], _NP_FROM_TRITON[o["data_type"]]) for o in config["output"]]
        self.output_names = [name for name, _ in self.outputs]

    def execute(self, requests: list[Any]) -> list[Any]:
        counts: list[int] = []
        feeds: dict[str, list[npt.NDArray[Any]]] = {name: [] for name, _ in self.inputs}
        for request in requests:
            for name, dtype in self.inputs:
                array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                feeds[name].append(np.ascontiguousarray(array, dtype=dtype))
            counts.append(len(feeds[self.inputs[0][0]][-1]))
        batch = {
            name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            for name, arrays in feeds.items()
        }
        try:
            results = self.session.run(self.output_names, batch)
        except Exception as exc:
            error = pb_utils.TritonError(f"{self.model_name}: ONNX Runtime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]

        responses = []
        start = 0
        for count in counts:
            tensors = [
                pb_utils.Tensor(
                    name, np.ascontiguousarray(result[start : start + count], dtype=dtype)
                )
                for (name, dtype), result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses
