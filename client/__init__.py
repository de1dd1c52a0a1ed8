"""tritonvision's client: embed images (and texts) with an encoder served by Triton.

One async core (:class:`AsyncVisionClient`) and a thin blocking face
(:class:`VisionClient`) that runs it on one background event-loop thread. Each client
owns exactly one event loop's worth of resources, made once and shared by every call:
one ``aiohttp.ClientSession`` (Triton over HTTP and every image URL), one gRPC channel
in ``grpc://`` mode, one decode thread pool. No call creates its own loop, session or
channel; once a client is closed (or its loop thread died) calls fail at once with
:class:`ClientClosed` / :class:`RuntimeUnavailable` instead of hanging.

Blocking use::

    from tritonvision.client import VisionClient

    with VisionClient("http://localhost:8000", "vision_encoder") as client:
        vector = client.embed_image("cat.jpg").result()           # float32 (D,)
        batch = client.batch_embed_images(
            ["cat.jpg", "https://example.com/dog.png", png_bytes]
        ).result()
        batch.embeddings                                           # (3, D), NaN rows failed
        batch.errors                                               # {index: exception}

Texts, with a CLIP / SigLIP export made with ``--text`` (sent to ``<model>_texts``;
override with ``text_model=``), land in the same space as the images::

    query = client.embed_text("a dog on a beach").result()     # float32 (D,)
    scores = batch.embeddings @ query                          # cosine (normalised)
    client.batch_embed_texts(["a cat", "a dog"]).result()      # BatchEmbedding

Texts are tokenised on the server by the checkpoint's own tokenizer: a text longer than
the context length (77 tokens for CLIP, 64 for SigLIP) is truncated exactly as that
tokenizer truncates it.

Async use::

    from tritonvision.client import AsyncVisionClient

    async with AsyncVisionClient("grpc://localhost:8001") as client:
        vector = await client.embed_image_url("https://example.com/cat.jpg")

Errors derive from :class:`TritonVisionError` (the tree is drawn in ``tritonvision.errors``);
settings and their defaults are the fields of :class:`ClientConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tritonvision._lazy import lazy_attributes
from tritonvision.contract import PreprocessSpec
from tritonvision.errors import (
    AuthenticationError,
    BatchError,
    BlockedAddress,
    ClientClosed,
    DecodeError,
    DecompressionBomb,
    FetchError,
    FetchStatusError,
    FetchTimeout,
    FetchTooLarge,
    ImageTooLarge,
    InvalidInput,
    ModelConfigError,
    ProtocolError,
    RequestTimeout,
    RuntimeUnavailable,
    ServerError,
    ServerOverloaded,
    ServerUnavailable,
    TritonVisionError,
)

# The rest loads on first use (PEP 562): the python-backend preprocess model imports
# ``tritonvision.client._imaging`` inside Triton's stub, which must not need aiohttp or
# tritonclient (the container image installs numpy and Pillow only).
_LAZY: dict[str, str] = {
    "AsyncVisionClient": "_async_client",
    "ClientState": "_async_client",
    "ClientConfig": "_config",
    "ConfigOverrides": "_config",
    "parse_header": "_config",
    "FetchConfig": "_fetch",
    "ModelInfo": "_model_info",
    "TextModelInfo": "_model_info",
    "BatchEmbedding": "_results",
    "ImageSource": "_sources",
    "ClientStats": "_stats",
    "PendingBatchEmbedding": "_sync_client",
    "PendingEmbedding": "_sync_client",
    "PendingModelInfo": "_sync_client",
    "PendingTextModelInfo": "_sync_client",
    "VisionClient": "_sync_client",
}

if TYPE_CHECKING:
    from ._async_client import AsyncVisionClient, ClientState
    from ._config import ClientConfig, ConfigOverrides, parse_header
    from ._fetch import FetchConfig
    from ._model_info import ModelInfo, TextModelInfo
    from ._results import BatchEmbedding
    from ._sources import ImageSource
    from ._stats import ClientStats
    from ._sync_client import (
        PendingBatchEmbedding,
        PendingEmbedding,
        PendingModelInfo,
        PendingTextModelInfo,
        VisionClient,
    )


__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)


__all__ = [
    "AsyncVisionClient",
    "AuthenticationError",
    "BatchEmbedding",
    "BatchError",
    "BlockedAddress",
    "ClientClosed",
    "ClientConfig",
    "ClientState",
    "ClientStats",
    "ConfigOverrides",
    "DecodeError",
    "DecompressionBomb",
    "FetchConfig",
    "FetchError",
    "FetchStatusError",
    "FetchTimeout",
    "FetchTooLarge",
    "ImageSource",
    "ImageTooLarge",
    "InvalidInput",
    "ModelConfigError",
    "ModelInfo",
    "PendingBatchEmbedding",
    "PendingEmbedding",
    "PendingModelInfo",
    "PendingTextModelInfo",
    "PreprocessSpec",
    "ProtocolError",
    "RequestTimeout",
    "RuntimeUnavailable",
    "ServerError",
    "ServerOverloaded",
    "ServerUnavailable",
    "TextModelInfo",
    "TritonVisionError",
    "VisionClient",
    "parse_header",
]
