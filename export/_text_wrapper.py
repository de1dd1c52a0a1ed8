"""The text module that gets exported: token tensors in, one embedding per text out.

Also the two embedders that turn a transformers text tower into ``token tensors -> [N, D]``
as transformers' own ``get_text_features`` does (CLIP: the projection of the pooled EOS token;
SigLIP: the tower's ``pooler_output``, its head). Imports torch at module level; only the
export path imports this module.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional

__all__ = ["ProjectedTextPooling", "TextEmbeddingWrapper", "TextPooledOutput"]


class ProjectedTextPooling(nn.Module):
    """``projection(text_model(...).pooler_output)``: CLIP's ``get_text_features``."""

    def __init__(self, text_model: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model
        self.projection = projection

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        out: torch.Tensor = self.projection(pooled)
        return out


class TextPooledOutput(nn.Module):
    """``text_model(...).pooler_output``: SigLIP's ``get_text_features`` (the tower's head)."""

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        out: torch.Tensor = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask
        ).pooler_output
        return out


class TextEmbeddingWrapper(nn.Module):
    """Token tensors INT64 [N, L] -> embedder -> [N, D] fp32 (L2-normalised or raw).

    ``forward`` takes ``input_ids`` and, when the tokenizer gives one, ``attention_mask``
    (the graph's inputs keep those names). The embedding is cast to fp32 before the L2 norm,
    so an fp16 export keeps the fp32-out contract.
    """

    def __init__(self, embedder: nn.Module, *, normalize: bool) -> None:
        super().__init__()
        self.embedder = embedder
        self.normalize = normalize

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        embeddings: torch.Tensor = self.embedder(input_ids, attention_mask).to(torch.float32)
        if self.normalize:
            embeddings = functional.normalize(embeddings, p=2.0, dim=-1)
        return embeddings

    def to_fp16(self) -> TextEmbeddingWrapper:
        """A copy whose embedder weights are fp16 (token ids stay INT64, output fp32)."""
        half = copy.deepcopy(self)
        half.embedder.half()
        return half.eval()
