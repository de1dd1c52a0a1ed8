"""The module that gets exported: uint8 NHWC pixels in, one embedding per image out.

Also the small pooling modules that turn a transformers model into ``pixel_values -> [N, D]``
(the "embedder" each encoder family builds). Imports torch at module level; only the export
path imports this module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

__all__ = [
    "DINOV2_POOLINGS",
    "Dinov2Pooling",
    "EmbeddingWrapper",
    "PooledOutput",
    "PooledProjection",
]

# DINOv2's embeddings: the final-layer-normed CLS token (Dinov2Model's pooler_output), or
# that CLS token concatenated with the mean of the (equally normed) patch tokens, the
# "cls+avgpool" input of DINOv2's linear probes and of Dinov2ForImageClassification.
DINOV2_POOLINGS: tuple[str, ...] = ("cls", "cls+mean")


class PooledOutput(nn.Module):
    """``model(pixel_values=x).pooler_output``: SigLIP towers and pooled transformers backbones."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model(pixel_values=pixel_values).pooler_output
        if pooled is None:  # e.g. a ViTModel built with add_pooling_layer=False
            raise ValueError(f"{type(self.model).__name__} returned no pooler_output")
        out: torch.Tensor = pooled.flatten(1)  # some poolers keep 1x1 spatial dims
        return out


class PooledProjection(nn.Module):
    """``projection(tower(pixel_values=x).pooler_output)``: CLIP's image embedding."""

    def __init__(self, tower: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.projection = projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.projection(self.tower(pixel_values=pixel_values).pooler_output)
        return out


class Dinov2Pooling(nn.Module):
    """A ``Dinov2Model``'s embedding: ``cls`` ([N, D]) or ``cls+mean`` ([N, 2D]).

    ``last_hidden_state`` is already layer-normed by the model, so both pieces are the normed
    tokens DINOv2 itself uses (``x_norm_clstoken``, ``x_norm_patchtokens``).
    """

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        if pooling not in DINOV2_POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(DINOV2_POOLINGS)}")
        self.model = model
        self.pooling = pooling

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=pixel_values).last_hidden_state
        cls = tokens[:, 0]
        if self.pooling == "cls":
            out: torch.Tensor = cls
            return out
        return torch.cat([cls, tokens[:, 1:].mean(dim=1)], dim=1)


class EmbeddingWrapper(nn.Module):
    """pixels uint8 [N, H, W, 3] -> rescale, normalise -> embedder -> [N, D] fp32 (L2 or raw).

    ``embedder`` maps normalised NCHW float pixels to [N, D] (a family's pooling module, or
    the user's own module). Rescale and normalise run in fp32 whatever the weights' dtype,
    and the embedding is cast to fp32 before the L2 norm, so an fp16 export keeps the
    uint8-in, fp32-out contract.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        embedder: nn.Module,
        *,
        rescale_factor: float,
        mean: Sequence[float],
        std: Sequence[float],
        normalize: bool,
    ) -> None:
        super().__init__()
        self.embedder = embedder
        self.rescale_factor = float(rescale_factor)
        self.normalize = normalize
        self.compute_dtype = torch.float32
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC pixels -> the embedder's input: rescaled, normalised NCHW."""
        x = pixels.permute(0, 3, 1, 2).to(torch.float32) * self.rescale_factor
        return ((x - self.mean) / self.std).to(self.compute_dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        embeddings: torch.Tensor = self.embedder(self.pixel_values(pixels)).to(torch.float32)
        if self.normalize:
            embeddings = functional.normalize(embeddings, p=2.0, dim=-1)
        return embeddings

    def to_fp16(self) -> EmbeddingWrapper:
        """A copy whose embedder weights are fp16 (the normalisation buffers stay fp32)."""
        half = copy.deepcopy(self)
        half.embedder.half()
        half.compute_dtype = torch.float16
        return half.eval()
