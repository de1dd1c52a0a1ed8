"""The preprocessing spec an export publishes, read through the contract's ``PreprocessSpec``.

``tritonvision.contract.PreprocessSpec`` is the one reader and writer of the spec (DESIGN.md),
so the exporter publishes exactly what the client and the preprocess model parse. This module
only adds the export-side knowledge: which family's defaults apply, and turning the spec's
``ModelConfigError`` into a :class:`CheckpointError` that names the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tritonvision.contract import PreprocessSpec
from tritonvision.errors import ModelConfigError

from ._errors import CheckpointError

__all__ = ["default_spec", "spec_from_processor_config"]

# The image processor whose defaults stand in for keys a processor config leaves out.
_PROCESSOR_TYPES = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor"}


def default_spec(family: str, image_size: int) -> PreprocessSpec:
    """The family's preprocessing for a checkpoint without ``preprocessor_config.json``."""
    if family == "siglip":
        return PreprocessSpec.siglip_default(image_size)
    return PreprocessSpec.clip_default(image_size)


def spec_from_processor_config(
    config: Mapping[str, Any], *, family: str, path: Path | None = None
) -> PreprocessSpec:
    """Read a transformers ``preprocessor_config.json`` (already parsed)."""
    if not (config.get("image_processor_type") or config.get("feature_extractor_type")):
        # PreprocessSpec picks the processor's defaults by this key; without it, the
        # checkpoint's family decides.
        config = {**config, "image_processor_type": _PROCESSOR_TYPES[family]}
    try:
        return PreprocessSpec.from_hf_processor_config(config)
    except ModelConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise CheckpointError(f"{where}{exc.message}", checkpoint=path) from exc
