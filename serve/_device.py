"""Which device the local Triton runs on, and what each device needs: detection and plans.

``tritonvision serve --device auto|cpu|gpu`` resolves through :func:`resolve_device`:

- ``cpu``: today's CPU runtime repository (ONNX Runtime's CPU provider, ``KIND_CPU``).
- ``gpu``: ONNX Runtime's CUDA provider (TensorRT's first when ``tensorrt`` imports, its
  engines cached in the server's work dir), ``KIND_GPU`` instances. When no GPU is usable
  it fails at start with :class:`DeviceUnavailable` naming every missing piece.
- ``auto``: ``gpu`` when a GPU is visible AND onnxruntime-gpu offers
  ``CUDAExecutionProvider``; ``cpu`` otherwise (on a machine without a GPU nothing is
  imported or run beyond a look at ``CUDA_VISIBLE_DEVICES``, ``/dev`` and ``PATH``).

Everything here is a pure function of a :class:`DeviceProbe` (what was found), so the
choices are tested on a CPU machine; :func:`probe_device` is the one place that looks.

The ``NAME_preprocess`` model picks its JPEG decoder with :func:`choose_image_decoder`:
nvImageCodec (PyPI ``nvidia-nvimgcodec-cu12``) on a ``KIND_GPU`` instance when it imports,
Pillow otherwise. :class:`NvJpegDecoder` changes only the decode step: the header checks
(format, declared size) and the resize + crop are :mod:`tritonvision.client._imaging`'s.
Pixels agree with the Pillow path within the tolerance the client's fast path already
meets against transformers (``tests/unit/test_client_imaging.py``: after normalisation
max |d| < 0.1, mean |d| < 0.006, i.e. a few grey levels at worst, ~0.4 on average): nvJPEG and
libjpeg-turbo differ in IDCT rounding and chroma upsampling (we ask nvJPEG for fancy
upsampling, libjpeg-turbo's default), and Pillow's fast path decodes at a reduced DCT
scale where the GPU decodes in full and box-reduces. ``bench/device.sh`` measures the
difference on the card it runs on.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from tritonvision.contract import PARAM_ORT_PROVIDERS

from ._errors import ServeError

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "DEVICES",
    "TENSORRT_PROVIDER",
    "DevicePlan",
    "DeviceProbe",
    "DeviceUnavailable",
    "NvJpegDecoder",
    "check_providers",
    "choose_image_decoder",
    "gpu_providers",
    "parse_providers",
    "probe_device",
    "providers_for_instance",
    "resolve_device",
]

DEVICES = ("auto", "cpu", "gpu")


CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
_GPU_PROVIDERS = frozenset({CUDA_PROVIDER, TENSORRT_PROVIDER})

Providers = list[tuple[str, dict[str, str]]]


class DeviceUnavailable(ServeError):
    """``--device gpu`` was asked for and this machine cannot run it (``missing`` says why)."""

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


# ----------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class DeviceProbe:
    """What this machine offers (see :func:`probe_device`)."""

    gpus: tuple[str, ...] = ()
    """Names (nvidia-smi) or device nodes of the visible GPUs; empty when none."""
    gpu_note: str = ""
    """Why no GPU is visible (when ``gpus`` is empty)."""
    ort_distribution: str = ""
    """``onnxruntime-gpu``, ``onnxruntime`` or '' (not installed)."""
    ort_providers: tuple[str, ...] = ()
    """``onnxruntime.get_available_providers()``; empty when not looked at."""
    tensorrt: bool = False
    """``tensorrt`` is importable (ORT's TensorRT provider can build engines)."""


_NVIDIA_NODE = re.compile(r"nvidia\d+")


def _ort_distribution() -> str:
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return name
    return ""


def probe_device(
    *,
    env: Mapping[str, str] | None = None,
    dev_dir: Path = Path("/dev"),
    which: Callable[[str], str | None] = shutil.which,
    look_at_onnxruntime: bool = True,
) -> DeviceProbe:
    """Look for a GPU, then (only if one is visible) at ONNX Runtime's providers.

    A GPU is visible when ``CUDA_VISIBLE_DEVICES`` does not hide them all ('' or -1) and
    ``nvidia-smi -L`` lists one, or (no nvidia-smi) a ``/dev/nvidiaN`` node exists.
    """
    env = os.environ if env is None else env
    hidden = env.get("CUDA_VISIBLE_DEVICES")
    gpus: tuple[str, ...] = ()
    note = ""
    if hidden is not None and hidden.strip() in ("", "-1"):
        note = f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU"
    else:
        smi = which("nvidia-smi")
        if smi:
            try:
                listed = subprocess.run(
                    [smi, "-L"], capture_output=True, text=True, timeout=20, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                note = f"nvidia-smi failed: {exc}"
            else:
                gpus = tuple(
                    ln.strip() for ln in listed.stdout.splitlines() if ln.startswith("GPU")
                )
                if not gpus:
                    tail = (listed.stdout + listed.stderr).strip().splitlines()[-1:]
                    note = "nvidia-smi lists no GPU" + (f" ({tail[0]})" if tail else "")
        else:
            try:
                nodes = sorted(p.name for p in dev_dir.iterdir() if _NVIDIA_NODE.fullmatch(p.name))
            except OSError:
                nodes = []
            gpus = tuple(str(dev_dir / n) for n in nodes)
            if not gpus:
                note = f"no NVIDIA GPU visible (no nvidia-smi on PATH, no {dev_dir}/nvidiaN)"
    distribution = _ort_distribution()
    providers: tuple[str, ...] = ()
    if gpus and distribution and look_at_onnxruntime:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    tensorrt = bool(gpus) and importlib.util.find_spec("tensorrt") is not None
    return DeviceProbe(
        gpus=gpus,
        gpu_note=note,
        ort_distribution=distribution,
        ort_providers=providers,
        tensorrt=tensorrt,
    )


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class DevicePlan:
    """The device a server runs on and why (``reason``, for the log and the bench report)."""

    device: str  # "cpu" or "gpu"
    reason: str
    tensorrt: bool = False
    gpus: tuple[str, ...] = field(default=())


def _missing_for_gpu(probe: DeviceProbe) -> list[str]:
    missing = []
    if not probe.gpus:
        missing.append(probe.gpu_note or "no NVIDIA GPU visible")
    if probe.ort_distribution != "onnxruntime-gpu":
        have = f" (installed: {probe.ort_distribution})" if probe.ort_distribution else ""
        missing.append(
            f"onnxruntime-gpu is not installed{have}: pip uninstall -y onnxruntime && "
            "pip install onnxruntime-gpu"
        )
    elif probe.gpus and CUDA_PROVIDER not in probe.ort_providers:
        missing.append(
            f"onnxruntime-gpu offers no {CUDA_PROVIDER} (available: "
            f"{', '.join(probe.ort_providers) or 'none'})"
        )
    return missing


def resolve_device(requested: str, probe: DeviceProbe) -> DevicePlan:
    """``auto``/``cpu``/``gpu`` -> a :class:`DevicePlan`; ``gpu`` without one raises
    :class:`DeviceUnavailable` naming everything that is missing."""
    if requested not in DEVICES:
        raise ValueError(f"device {requested!r}: choose from {', '.join(DEVICES)}")
    if requested == "cpu":
        return DevicePlan("cpu", "--device cpu")
    missing = _missing_for_gpu(probe)
    if not missing:
        trt = " + TensorRT" if probe.tensorrt else ""
        return DevicePlan(
            "gpu",
            f"{len(probe.gpus)} GPU(s) visible, onnxruntime-gpu with CUDA{trt}",
            tensorrt=probe.tensorrt,
            gpus=probe.gpus,
        )
    if requested == "gpu":
        raise DeviceUnavailable(
            "--device gpu: this machine cannot run the GPU path: " + "; ".join(missing), missing
        )
    return DevicePlan("cpu", "auto: " + "; ".join(missing))


# ----------------------------------------------------------------------------- providers


def gpu_providers(
    *, tensorrt_cache: Path | None, accelerator: Mapping[str, str] | None = None
) -> Providers:
    """The ONNX Runtime providers of a GPU encoder, in priority order.

    With ``tensorrt_cache`` TensorRT comes first, its engines cached there; the model
    config's TensorRT accelerator parameters (``precision_mode``, ``max_workspace_size_bytes``)
    become the provider's options, as Triton's onnxruntime backend maps them.
    """
    providers: Providers = []
    if tensorrt_cache is not None:
        options = {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(tensorrt_cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(tensorrt_cache),
        }
        accelerator = accelerator or {}
        if accelerator.get("precision_mode", "").upper() == "FP16":
            options["trt_fp16_enable"] = "True"
        if "max_workspace_size_bytes" in accelerator:
            options["trt_max_workspace_size"] = accelerator["max_workspace_size_bytes"]
        providers.append((TENSORRT_PROVIDER, options))
    providers.append((CUDA_PROVIDER, {}))
    providers.append((CPU_PROVIDER, {}))
    return providers


def parse_providers(text: str) -> Providers:
    """The JSON of :data:`PARAM_ORT_PROVIDERS` -> ``[(name, options)]``; '' means CPU only."""
    if not text:
        return [(CPU_PROVIDER, {})]
    try:
        raw = json.loads(text)
        providers = [
            (str(name), {str(k): str(v) for k, v in dict(opts).items()}) for name, opts in raw
        ]
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{PARAM_ORT_PROVIDERS}: not a JSON list of [name, options]: {exc}"
        ) from exc
    if not providers:
        raise ValueError(f"{PARAM_ORT_PROVIDERS}: empty provider list")
    return providers


def providers_for_instance(providers: Providers, *, kind: str, device_id: int) -> Providers:
    """Pin GPU providers to the Triton instance's device (``KIND_GPU`` instances only)."""
    if kind.upper() != "GPU":
        return providers
    return [
        (name, {**opts, "device_id": str(device_id)} if name in _GPU_PROVIDERS else opts)
        for name, opts in providers
    ]


def check_providers(requested: Sequence[str], available: Sequence[str], ort_version: str) -> None:
    """Raise ``RuntimeError`` naming the requested providers this ONNX Runtime lacks."""
    missing = [p for p in requested if p not in available]
    if missing:
        hint = " (install onnxruntime-gpu)" if set(missing) & _GPU_PROVIDERS else ""
        raise RuntimeError(
            f"ONNX Runtime {ort_version} lacks {', '.join(missing)}{hint}; "
            f"available: {', '.join(available) or 'none'}"
        )


# ----------------------------------------------------------------------------- decoding


def _import_nvimgcodec() -> ModuleType:
    return importlib.import_module("nvidia.nvimgcodec")


def choose_image_decoder(
    instance_kind: str, load_nvimgcodec: Callable[[], ModuleType] = _import_nvimgcodec
) -> tuple[ModuleType | None, str]:
    """``(nvimgcodec module, why)`` on a GPU instance where it imports, else ``(None, why)``.

    ``why`` is the sentence the preprocess model logs, so the log says which decoder runs.
    """
    if instance_kind.upper() != "GPU":
        return None, f"Pillow (instance kind {instance_kind.upper() or 'CPU'})"
    try:
        module = load_nvimgcodec()
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return None, (
            f"Pillow (GPU instance, but nvImageCodec does not import: {type(exc).__name__}: "
            f"{exc}; pip install nvidia-nvimgcodec-cu12[all])"
        )
    return module, "nvImageCodec (GPU instance)"


class NvJpegDecoder:
    """Decode a batch of JPEGs on the GPU with nvImageCodec; everything else is Pillow's.

    :meth:`decode_batch` returns, per item, the decoded RGB ``uint8`` HWC array, or None
    where Pillow must do the whole job (not a JPEG, CMYK, a header Pillow refuses, over the
    pixel limit, or nvImageCodec could not decode it): the Pillow path then produces the
    pixels or the usual error naming the item, so errors read the same on both devices.
    """

    def __init__(self, nvimgcodec: Any, *, device_id: int = 0) -> None:
        self._codec = nvimgcodec
        # fancy_upsampling=1: libjpeg-turbo's (Pillow's) default chroma upsampling.
        self._decoder = nvimgcodec.Decoder(device_id=device_id, options=":fancy_upsampling=1")
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=True)

    @staticmethod
    def accepts(data: bytes, max_pixels: int) -> bool:
        """A JPEG of YCbCr/grey pixels whose declared size is within ``max_pixels``."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
                width, height = img.size
                return img.mode in ("RGB", "L") and 0 < width * height <= max_pixels
        except Exception:  # not a JPEG, or a header Pillow refuses: Pillow reports it
            return False

    def _to_array(self, image: Any) -> npt.NDArray[np.uint8] | None:
        if image is None:
            return None
        arr = np.array(image.cpu(), dtype=np.uint8, copy=True)
        if arr.ndim != 3 or arr.shape[2] != 3:
            return None
        return arr

    def decode_batch(
        self, items: Sequence[bytes], max_pixels: int
    ) -> list[npt.NDArray[np.uint8] | None]:
        out: list[npt.NDArray[np.uint8] | None] = [None] * len(items)
        chosen = [i for i, data in enumerate(items) if self.accepts(data, max_pixels)]
        if not chosen:
            return out
        try:
            images = self._decoder.decode([items[i] for i in chosen], params=self._params)
        except Exception:
            images = None
        if images is not None and len(images) == len(chosen):
            for i, image in zip(chosen, images, strict=True):
                out[i] = self._to_array(image)
            return out
        # A failed item is dropped from a batch's result: decode one by one to know which.
        for i in chosen:
            try:
                out[i] = self._to_array(self._decoder.decode(items[i], params=self._params))
            except Exception:
                out[i] = None
        return out
