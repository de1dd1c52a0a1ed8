"""Tiny random encoders of the DINOv2, backbone and module families (no downloads).

The session repository (``tests/conftest.py``'s ``tiny_repository``) exports and serves them
beside the tiny CLIP; ``tests/e2e/test_export_families.py`` checks them against their own
pipelines. Checkpoints are made from transformers configs with fixed seeds and saved with
``save_pretrained`` together with their image processor, as a real checkpoint ships.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from tritonvision.contract import PreprocessSpec

TINY_DINOV2 = "tiny_dinov2"
TINY_VIT = "tiny_vit"
TINY_CONVNEXT = "tiny_convnext"
TINY_MODULE = "tiny_module"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SEED = 14


def seeded(build: Callable[[], nn.Module], seed: int = _SEED) -> nn.Module:
    """``build()`` in eval mode, its weights drawn from ``seed`` without disturbing the
    caller's RNG stream: the same weights in every session."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def make_dinov2(path: Path) -> Path:
    """DINOv2 as released, scaled down: BiT processor (short side 40 bicubic, crop 32, ImageNet
    mean/std; the real one is 256/224) and position embeddings for 64 px interpolated to the
    32 px crop (the real ones: 518 px, run at 224)."""
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=64,
        patch_size=8,
    )
    seeded(lambda: transformers.Dinov2Model(config)).save_pretrained(path)
    transformers.BitImageProcessorPil(
        size={"shortest_edge": 40},
        crop_size={"height": 32, "width": 32},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    ).save_pretrained(path)
    return path


def make_vit(path: Path) -> Path:
    """ViT with its pooler; ViTImageProcessor: exact 32x32 bilinear resize, no crop."""
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    seeded(lambda: transformers.ViTModel(config)).save_pretrained(path)
    transformers.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def make_convnext(path: Path) -> Path:
    """ConvNeXt; its processor's crop_pct rule: short side to int(32 / 0.875) = 36, crop 32."""
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    seeded(lambda: transformers.ConvNextModel(config)).save_pretrained(path)
    transformers.ConvNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_pct=0.875
    ).save_pretrained(path)
    return path


def make_swin(path: Path) -> Path:
    """Swin (exported with eager attention); ViTImageProcessor 32x32."""
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
    )
    seeded(lambda: transformers.SwinModel(config)).save_pretrained(path)
    transformers.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


class TinyEmbedder(nn.Module):
    """A user's own backbone with its head removed: normalised NCHW pixels -> [N, 12]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.act = nn.GELU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pool(self.act(self.stem(x))).flatten(1))
        return out


def tiny_module() -> TinyEmbedder:
    """The same seeded module every time (conftest exports it, the tests rebuild it)."""
    module = seeded(TinyEmbedder)
    assert isinstance(module, TinyEmbedder)
    return module


# The module's preprocessing: short side 40 (bilinear), centre crop 32, ImageNet mean/std.
TINY_MODULE_SPEC = PreprocessSpec(
    resize_mode="shortest_edge",
    shortest_edge=40,
    crop_height=32,
    crop_width=32,
    resample="bilinear",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

# Served checkpoint models: name -> (family, maker).
SERVED_CHECKPOINTS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    TINY_DINOV2: ("dinov2", make_dinov2),
    TINY_VIT: ("backbone", make_vit),
    TINY_CONVNEXT: ("backbone", make_convnext),
}
# Every served family model: name -> family.
SERVED_FAMILIES: dict[str, str] = {
    **{name: family for name, (family, _) in SERVED_CHECKPOINTS.items()},
    TINY_MODULE: "module",
}


def family_options(repository: Path, name: str, checkpoint: Path | None = None) -> Any:
    """The session's export options for a tiny family model: small batches and one preprocess
    instance keep the one session Triton light."""
    from tritonvision.export import ExportOptions

    return ExportOptions(
        checkpoint=checkpoint,
        repository=repository,
        name=name,
        max_batch_size=8,
        preprocess_instances=1,
        max_queue_delay_us=1000,
    )


def export_tiny_families(repository: Path, checkpoints: Path) -> None:
    """Export every tiny family model into ``repository`` (checkpoints saved under
    ``checkpoints``)."""
    from tritonvision.export import export_model, export_module

    for name, (_, make) in SERVED_CHECKPOINTS.items():
        export_model(family_options(repository, name, make(checkpoints / name)))
    options = family_options(repository, TINY_MODULE)
    export_module(tiny_module(), preprocess=TINY_MODULE_SPEC, options=options)
