"""Session fixtures: a tiny exported encoder served by the real ``tritonserver``, started once.

Everything end-to-end in this suite talks to this one real Triton (no fakes): the tiny
CLIP export keeps it fast on a 2-core CI machine. The repository also holds the text towers
of two tiny two-tower checkpoints (``tests/_tiny_text.py``: CLIP and SigLIP, exported with
``text=True``), served as ``<name>_text``, ``<name>_tokenize`` and ``<name>_texts``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_MODEL = "tiny_clip"


@dataclass(frozen=True)
class TritonFixture:
    http_url: str
    grpc_url: str
    metrics_url: str
    model: str
    embedding_dim: int
    repository: Path
    server: object  # tritonvision.serve.LocalTriton

    @property
    def images_model(self) -> str:
        return f"{self.model}_images"


def tiny_clip_config() -> object:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )


@pytest.fixture(scope="session")
def text_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny two-tower checkpoints with their tokenizers, by model name
    (``TINY_CLIP_TEXT``, ``TINY_SIGLIP_TEXT``): made once per session, nothing downloaded."""
    from _tiny_text import TEXT_CHECKPOINTS

    root = tmp_path_factory.mktemp("text-checkpoints")
    return {name: maker(root / name) for name, (_, maker, _) in TEXT_CHECKPOINTS.items()}


@pytest.fixture(scope="session")
def tiny_repository(
    tmp_path_factory: pytest.TempPathFactory, text_checkpoints: dict[str, Path]
) -> Path:
    """A model repository holding the tiny CLIP encoder, its preprocess model and ensemble,
    beside it one tiny encoder of each other family (``tests/_tiny_families.py``), and the
    tiny CLIP and SigLIP two-tower checkpoints exported with their text towers."""
    from _tiny_families import export_tiny_families

    from tritonvision.export import ExportOptions, builtin_encoder, export_encoder, export_model

    repo = tmp_path_factory.mktemp("repo")
    export_encoder(
        builtin_encoder(tiny_clip_config()),
        ExportOptions(repository=repo, name=TINY_MODEL, max_batch_size=16, max_queue_delay_us=5000),
    )
    export_tiny_families(repo, tmp_path_factory.mktemp("family-checkpoints"))
    # Small batches, one preprocess/tokenize instance: the one session Triton stays light.
    for name, checkpoint in text_checkpoints.items():
        export_model(
            ExportOptions(
                checkpoint=checkpoint,
                repository=repo,
                name=name,
                text=True,
                max_batch_size=8,
                preprocess_instances=1,
                max_queue_delay_us=1000,
            )
        )
    return repo


@pytest.fixture(scope="session")
def triton(tiny_repository: Path) -> Iterator[TritonFixture]:
    """The real tritonserver, once per test session, on free ports."""
    from tritonvision.serve import LocalTriton, ServerPorts, free_port

    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    # Keep the repository's 5 ms queue delay (serve's CPU default is 0 us) so the batching
    # tests see Triton merge requests deterministically, as it does on the GPU deployment.
    server = LocalTriton(tiny_repository, ports=ports, queue_delay_us=None)
    # Two ORT threads per instance would oversubscribe CI's 2 cores next to the client.
    os.environ.setdefault("TRITONVISION_ORT_THREADS", "1")
    server.start(ready_timeout_s=180)
    try:
        yield TritonFixture(
            http_url=server.http_url,
            grpc_url=server.grpc_url,
            metrics_url=server.metrics_url,
            model=TINY_MODEL,
            embedding_dim=16,
            repository=tiny_repository,
            server=server,
        )
    finally:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark by tier: ``tests/unit`` needs no Triton; ``tests/e2e`` starts the real tritonserver."""
    for item in items:
        parts = item.path.parts
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        elif "unit" in parts:
            item.add_marker(pytest.mark.unit)
