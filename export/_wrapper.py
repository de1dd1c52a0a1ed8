"""The module that gets exported: uint8 NHWC pixels in, one embedding per image out.

Imports torch at module level; only the export path imports this module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

__all__ = ["EmbeddingWrapper"]


class EmbeddingWrapper(nn.Module):
    """pixels uint8 [N, H, W, 3] -> rescale, normalise -> vision tower -> projection -> [N, D] fp32.

    ``tower`` is a transformers vision transformer whose output has ``pooler_output``;
    ``projection`` maps the pooled features to the embedding (``nn.Identity`` for SigLIP).
    Rescale and normalise run in fp32 whatever the weights' dtype, and the embedding is cast to
    fp32 before the L2 norm, so an fp16 export keeps the uint8-in, fp32-out contract.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        tower: nn.Module,
        projection: nn.Module,
        *,
        rescale_factor: float,
        mean: Sequence[float],
        std: Sequence[float],
        normalize: bool,
    ) -> None:
        super().__init__()
        self.tower = tower
        self.projection = projection
        self.rescale_factor = float(rescale_factor)
        self.normalize = normalize
        self.compute_dtype = torch.float32
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32) * self.rescale_factor
        x = ((x - self.mean) / self.std).to(self.compute_dtype)
        pooled = self.tower(pixel_values=x).pooler_output
        embeddings: torch.Tensor = self.projection(pooled).to(torch.float32)
        if self.normalize:
            embeddings = functional.normalize(embeddings, p=2.0, dim=-1)
        return embeddings

    def to_fp16(self) -> EmbeddingWrapper:
        """A copy whose tower and projection weights are fp16 (the buffers stay fp32)."""
        half = copy.deepcopy(self)
        half.tower.half()
        half.projection.half()
        half.compute_dtype = torch.float16
        return half.eval()
