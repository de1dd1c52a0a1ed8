"""The preprocessing spec an export publishes, read through the contract's ``PreprocessSpec``.

``tritonvision.contract.PreprocessSpec`` is the one reader and writer of the spec (DESIGN.md),
and :meth:`~tritonvision.contract.PreprocessSpec.from_hf_processor_config` the one reader of
transformers' processor rules, so the exporter publishes exactly what the client and the
preprocess model parse. This module only adds the export-side knowledge: which image processor
a family's checkpoints mean when their config names none, and turning the spec's
``ModelConfigError`` into a :class:`CheckpointError` that names the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tritonvision.contract import PreprocessSpec
from tritonvision.errors import ModelConfigError

from ._errors import CheckpointError

__all__ = ["spec_from_processor_config"]


def spec_from_processor_config(
    config: Mapping[str, Any], *, processor_type: str | None, path: Path | None = None
) -> PreprocessSpec:
    """Read a transformers ``preprocessor_config.json`` (already parsed).

    ``processor_type`` is the image processor the family's checkpoints use when the config
    names none (``None``: such a config is refused, its resize rule being unknown).
    """
    where = f"{path}: " if path is not None else ""
    if not (config.get("image_processor_type") or config.get("feature_extractor_type")):
        if processor_type is None:
            raise CheckpointError(
                f"{where}preprocessor config names no image_processor_type, so its resize rule "
                "is unknown",
                checkpoint=path,
            )
        # PreprocessSpec picks the processor's defaults by this key; without it, the
        # checkpoint's family decides.
        config = {**config, "image_processor_type": processor_type}
    try:
        return PreprocessSpec.from_hf_processor_config(config)
    except ModelConfigError as exc:
        raise CheckpointError(f"{where}{exc.message}", checkpoint=path) from exc
