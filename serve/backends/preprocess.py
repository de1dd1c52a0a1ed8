"""Triton python-backend model: encoded image bytes in, the encoder's uint8 pixels out.

This is the first step of the ``<name>_images`` ensemble, for people who call Triton
directly with raw JPEG/PNG/WebP bytes. It decodes with the same code the client uses
(:mod:`tritonvision.client._imaging`), reading the preprocessing spec from its own
config ``parameters`` (written by ``tritonvision export``).

The bytes are untrusted: decoding is bounded by a pixel limit, an undecodable item
fails only its own request with a message naming the item, and nothing here can take
the stub process down.

On a ``KIND_GPU`` instance (``tritonvision serve --device gpu``) JPEGs are decoded on the
GPU with nvImageCodec when it imports (:func:`tritonvision.serve._device.choose_image_decoder`;
the log says which decoder runs and why). Only the decode step changes: the header checks
come first, the resize and crop are the client's code, and whatever nvImageCodec does not
take (other formats, CMYK, failures) goes through the Pillow path as before. The pixels
agree within the tolerance documented in :mod:`tritonvision.serve._device`.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils
from PIL import Image

from tritonvision.client._imaging import DEFAULT_REDUCING_GAP, load_image_pixels, resize_and_crop
from tritonvision.contract import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGES_INPUT,
    PARAM_MAX_IMAGE_PIXELS,
    PARAM_PREPROCESSING,
    PIXELS_INPUT,
    PreprocessSpec,
)
from tritonvision.errors import TritonVisionError
from tritonvision.serve._device import NvJpegDecoder, choose_image_decoder
from tritonvision.serve.backends._stub import config_parameter, error_response, log_info


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        self.model_name = config["name"]
        try:
            spec_json = parameters[PARAM_PREPROCESSING]["string_value"]
        except KeyError as exc:
            raise pb_utils.TritonModelException(
                f"{self.model_name}: config parameter '{PARAM_PREPROCESSING}' is missing"
            ) from exc
        self.spec = PreprocessSpec.from_json(spec_json)
        max_pixels = config_parameter(config, PARAM_MAX_IMAGE_PIXELS)
        self.max_pixels = int(max_pixels) if max_pixels else DEFAULT_MAX_IMAGE_PIXELS
        # Pillow releases the GIL while decoding and resizing, so threads give real parallelism.
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        kind = args.get("model_instance_kind", "CPU")
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        module, why = choose_image_decoder(kind)
        self.gpu_decoder: NvJpegDecoder | None = None
        if module is not None:
            try:
                self.gpu_decoder = NvJpegDecoder(module, device_id=device_id)
            except Exception as exc:
                why = f"Pillow (nvImageCodec failed to start on GPU {device_id}: {exc})"
            else:
                why = f"nvImageCodec on GPU {device_id} (JPEG; other formats with Pillow)"
        log_info(f"{self.model_name}: decoding images with {why}")

    def _finish(
        self, item: tuple[int, bytes, npt.NDArray[np.uint8] | None]
    ) -> npt.NDArray[np.uint8]:
        index, data, decoded = item
        if decoded is None:
            return self._decode((index, data))
        # Decoded on the GPU: the same resize + crop as the Pillow path's fast mode.
        return resize_and_crop(Image.fromarray(decoded), self.spec, DEFAULT_REDUCING_GAP)

    def _decode(self, item: tuple[int, bytes]) -> npt.NDArray[np.uint8]:
        index, data = item
        return load_image_pixels(
            data, self.spec, source=f"images[{index}]", max_pixels=self.max_pixels
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, IMAGES_INPUT).as_numpy()
            items = [(i, bytes(row.reshape(-1)[0])) for i, row in enumerate(images)]
            try:
                if self.gpu_decoder is None:
                    pixels = np.stack(list(self.pool.map(self._decode, items)))
                else:
                    decoded = self.gpu_decoder.decode_batch(
                        [data for _, data in items], self.max_pixels
                    )
                    jobs = [(i, data, d) for (i, data), d in zip(items, decoded, strict=True)]
                    pixels = np.stack(list(self.pool.map(self._finish, jobs)))
            except TritonVisionError as exc:  # the bytes are the caller's mistake: 400
                responses.append(error_response(f"{self.model_name}: {exc}", invalid_input=True))
                continue
            except Exception as exc:
                message = f"{self.model_name}: cannot preprocess image: {type(exc).__name__}: {exc}"
                responses.append(error_response(message))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(PIXELS_INPUT, pixels)]))
        return responses

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
