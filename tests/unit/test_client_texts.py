"""The client's text calls, without Triton: input checks, packing, order, per-item errors.

Two seams, both public: the checks and building blocks of ``client/_texts.py`` called
directly (with fake ``infer`` callables), and the whole ``AsyncVisionClient`` against a
fake KServe v2 text model served by a real ``aiohttp.web`` server on 127.0.0.1 (its wire
format is Triton's: binary tensors behind a JSON header). The real Triton path, gRPC
included, is ``tests/e2e/test_client_text.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from _local_servers import LocalServer
from aiohttp import web
from tritonclient.utils import deserialize_bytes_tensor

from tritonvision.client import AsyncVisionClient, ClientConfig, TextModelInfo, VisionClient
from tritonvision.client._coalesce import Coalescer
from tritonvision.client._model_info import text_model_info_from_config
from tritonvision.client._pipeline import BatchPipeline
from tritonvision.client._protocol import (
    HEADER_LENGTH_HEADER,
    ModelConfig,
    TensorInfo,
    build_infer_request,
)
from tritonvision.client._stats import StatsRecorder
from tritonvision.client._texts import (
    check_batch_texts,
    encode_text,
    texts_tensor,
    wire_bytes,
)
from tritonvision.contract import PARAM_CONTEXT_LENGTH
from tritonvision.errors import InvalidInput, ModelConfigError, ServerError

pytestmark = pytest.mark.timeout(30)

TEXT_MODEL = "enc_texts"
DIM = 3
REFUSED = "REFUSE ME"


def text_config(
    *, name: str = TEXT_MODEL, max_batch_size: int = 8, input_name: str = "texts"
) -> dict[str, Any]:
    """A Triton model config (HTTP JSON) as export writes for ``NAME_texts``."""
    return {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": max_batch_size,
        "input": [{"name": input_name, "data_type": "TYPE_STRING", "dims": ["1"]}],
        "output": [{"name": "embeddings", "data_type": "TYPE_FP32", "dims": [str(DIM)]}],
        "parameters": {PARAM_CONTEXT_LENGTH: {"string_value": "77"}},
    }


def row_of(text: bytes) -> list[float]:
    """The fake model's embedding of one text: its byte length, first byte, and 1."""
    return [float(len(text)), float(text[0]) if text else -1.0, 1.0]


@dataclass
class FakeTextTriton:
    """A KServe v2 text model: BYTES ``texts`` [N, 1] in, FP32 ``embeddings`` [N, 3] out.

    Refuses (400) any request holding :data:`REFUSED`, as Triton refuses a whole request
    when the tokenizer fails one of its texts.
    """

    max_batch_size: int = 8
    delay_s: float = 0.0
    overloaded: int = 0  # answer this many requests 503 "queue full" first
    packs: list[list[bytes]] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    base_url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/models/{model}/config", self._config)
        app.router.add_post("/v2/models/{model}/infer", self._infer)
        return app

    async def _config(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if model == "image_encoder":
            doc = {
                "name": model,
                "max_batch_size": 8,
                "input": [{"name": "pixels", "data_type": "TYPE_UINT8", "dims": [32, 32, 3]}],
                "output": [{"name": "embeddings", "data_type": "TYPE_FP32", "dims": [DIM]}],
            }
            return web.json_response(doc)
        if model != TEXT_MODEL:
            return web.json_response({"error": f"unknown model {model}"}, status=404)
        return web.json_response(text_config(max_batch_size=self.max_batch_size))

    async def _infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        length = int(request.headers[HEADER_LENGTH_HEADER])
        header = json.loads(body[:length])
        (tensor,) = header["inputs"]
        assert tensor["name"] == "texts" and tensor["datatype"] == "BYTES"
        texts = [bytes(t) for t in deserialize_bytes_tensor(body[length:])]
        self.packs.append(texts)
        self.shapes.append(tensor["shape"])
        await asyncio.sleep(self.delay_s)
        if self.overloaded > 0:
            self.overloaded -= 1
            return web.json_response({"error": "maximum queue size exceeded"}, status=503)
        if any(REFUSED.encode() in t for t in texts):
            return web.json_response({"error": "tokenizer failed on texts[0]"}, status=400)
        rows = np.array([row_of(t) for t in texts], dtype=np.float32)
        raw = rows.tobytes()
        out = {
            "model_name": TEXT_MODEL,
            "outputs": [
                {
                    "name": "embeddings",
                    "datatype": "FP32",
                    "shape": list(rows.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
        }
        head = json.dumps(out).encode()
        return web.Response(
            body=head + raw,
            headers={HEADER_LENGTH_HEADER: str(len(head))},
            content_type="application/octet-stream",
        )


@pytest.fixture
async def fake() -> AsyncIterator[FakeTextTriton]:
    server = FakeTextTriton()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


def client_for(server: FakeTextTriton, **overrides: Any) -> AsyncVisionClient:
    return AsyncVisionClient(server.base_url, "enc", **overrides)


# ------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("item", "type_name"),
    [(b"a dog", "bytes"), (None, "NoneType"), (7, "int"), (["a", "b"], "list")],
)
def test_a_non_str_text_is_refused_naming_its_index_and_type(item: object, type_name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        encode_text(item, max_request_bytes=1 << 20, index=4)
    assert "texts[4]" in str(info.value) and type_name in str(info.value)
    assert info.value.source == (item if item is not None else "texts[4]")


def test_a_lone_surrogate_is_refused_as_not_utf8_encodable() -> None:
    text = "abc\ud800def"
    with pytest.raises(InvalidInput) as info:
        encode_text(text, max_request_bytes=1 << 20, index=2)
    message = str(info.value)
    assert "texts[2]" in message and "UTF-8" in message and "position 3" in message


def test_a_single_text_names_itself_without_an_index() -> None:
    with pytest.raises(InvalidInput, match=r"^text is a bytes"):
        encode_text(b"x", max_request_bytes=100)


def test_empty_and_non_ascii_texts_encode_as_utf8() -> None:
    assert encode_text("", max_request_bytes=100) == b""
    assert encode_text("日本 🐶", max_request_bytes=100) == "日本 🐶".encode()


def test_a_text_over_the_request_byte_cap_is_refused() -> None:
    encode_text("x" * 96, max_request_bytes=100)  # 96 bytes + its 4-byte length: fits
    with pytest.raises(InvalidInput, match="max_request_bytes"):
        encode_text("é" * 49, max_request_bytes=100)  # 98 UTF-8 bytes + 4


@pytest.mark.parametrize("texts", ["a dog", b"a dog", bytearray(b"a dog")])
def test_a_single_text_passed_as_the_batch_is_refused(texts: object) -> None:
    with pytest.raises(InvalidInput, match="embed_text"):
        check_batch_texts(texts)


def test_the_sync_client_refuses_a_single_text_batch_at_the_call() -> None:
    client = VisionClient("http://127.0.0.1:9", "enc")
    try:
        with pytest.raises(InvalidInput, match="not a single text"):
            client.batch_embed_texts("a dog")
        assert client.runtime.thread is None  # refused before any work was started
        assert client.text_model == "enc_texts"
    finally:
        client.close()


def test_the_text_model_defaults_to_the_texts_ensemble_and_can_be_overridden() -> None:
    assert AsyncVisionClient("http://127.0.0.1:9", "enc").text_model == "enc_texts"
    assert AsyncVisionClient("http://127.0.0.1:9", text_model="t").text_model == "t"
    with pytest.raises(InvalidInput):
        AsyncVisionClient("http://127.0.0.1:9", text_model="")


# --------------------------------------------------------------------------- model info


def _config(doc: dict[str, Any]) -> ModelConfig:
    from tritonvision.client._protocol import parse_model_config

    return parse_model_config(doc)


def test_text_model_info_reads_the_context_length_and_embedding_size() -> None:
    info = text_model_info_from_config(TEXT_MODEL, "", _config(text_config()))
    assert isinstance(info, TextModelInfo)
    assert (info.input_name, info.output_name) == ("texts", "embeddings")
    assert (info.embedding_dim, info.max_batch_size, info.context_length) == (DIM, 8, 77)


def test_a_model_without_a_texts_input_is_refused_naming_it() -> None:
    with pytest.raises(ModelConfigError, match=r"'enc_text' has no input 'texts'.*input_ids"):
        text_model_info_from_config(
            "enc_text", "", _config(text_config(name="enc_text", input_name="input_ids"))
        )


def test_a_texts_input_of_another_type_is_refused() -> None:
    cfg = ModelConfig(
        name="m",
        max_batch_size=4,
        inputs=(TensorInfo("texts", "UINT8", (1,)),),
        outputs=(TensorInfo("embeddings", "FP32", (DIM,)),),
        parameters={},
    )
    with pytest.raises(ModelConfigError, match="'m' input 'texts' is UINT8"):
        text_model_info_from_config("m", "", cfg)


# ------------------------------------------------------------------------------- wire


def test_texts_travel_as_a_bytes_tensor_of_n_by_1_in_the_binary_body() -> None:
    info = text_model_info_from_config(TEXT_MODEL, "", _config(text_config()))
    texts = [b"a dog", b"", "日本".encode()]
    tensor = texts_tensor(info, texts)
    assert tensor.datatype == "BYTES" and tensor.shape == (3, 1)
    assert tensor.nbytes == sum(wire_bytes(t) for t in texts)
    request = build_infer_request([tensor], ["embeddings"])
    header = json.loads(request.body[: request.header_length])
    assert header["inputs"][0]["shape"] == [3, 1]
    assert header["inputs"][0]["parameters"]["binary_data_size"] == tensor.nbytes
    decoded = deserialize_bytes_tensor(request.body[request.header_length :])
    assert [bytes(t) for t in decoded] == texts


def test_an_unbatched_text_model_gets_one_text_of_shape_1() -> None:
    cfg = _config(text_config(max_batch_size=0))
    info = text_model_info_from_config(TEXT_MODEL, "", cfg)
    assert texts_tensor(info, [b"x"]).shape == (1,)


# ---------------------------------------------------------------- packing by wire bytes


class CountingModel:
    def __init__(self, *, delay_s: float = 0.02) -> None:
        self.packs: list[list[bytes]] = []
        self.delay_s = delay_s

    async def infer(self, texts: Sequence[bytes]) -> npt.NDArray[np.float32]:
        self.packs.append(list(texts))
        await asyncio.sleep(self.delay_s)
        return np.array([row_of(t) for t in texts], dtype=np.float32)


async def encoded(text: str) -> bytes:
    await asyncio.sleep(0)
    return text.encode()


async def test_a_text_pack_stays_within_the_byte_cap_and_keeps_order() -> None:
    model = CountingModel()
    texts = ["x" * n for n in (10, 30, 5, 40, 1, 1, 25, 12)]
    limit = 50
    pipeline: BatchPipeline[str, bytes] = BatchPipeline(
        prepare=encoded,
        infer=model.infer,
        slots=asyncio.Semaphore(1),  # one request out: the rest wait and get packed
        pack_size=8,
        lookahead=16,
        embedding_dim=DIM,
        stats=StatsRecorder(),
        weigh=wire_bytes,
        max_request_bytes=limit,
    )
    result = await pipeline.run(texts)
    assert result.ok
    assert max(len(p) for p in model.packs) > 1  # packs were made
    for pack in model.packs:
        assert len(pack) == 1 or sum(wire_bytes(t) for t in pack) <= limit
    assert [t for pack in model.packs for t in pack] == [t.encode() for t in texts]
    np.testing.assert_array_equal(result.embeddings[:, 0], [len(t) for t in texts])


async def test_a_text_heavier_than_the_cap_goes_alone() -> None:
    model = CountingModel()
    pipeline: BatchPipeline[str, bytes] = BatchPipeline(
        prepare=encoded,
        infer=model.infer,
        slots=asyncio.Semaphore(1),
        pack_size=8,
        lookahead=16,
        embedding_dim=DIM,
        stats=StatsRecorder(),
        weigh=wire_bytes,
        max_request_bytes=20,
    )
    result = await pipeline.run(["a", "y" * 40, "b", "c"])
    assert result.ok
    assert [b"y" * 40] in model.packs


async def test_coalesced_texts_stay_within_the_byte_cap() -> None:
    model = CountingModel(delay_s=0.05)
    slots = asyncio.Semaphore(4)
    coalescer: Coalescer[bytes] = Coalescer(
        infer=model.infer,
        slots=slots,
        max_batch=16,
        open_requests=1,
        weigh=wire_bytes,
        max_request_bytes=40,
    )
    texts = [f"t{i:02d}".encode() * (1 + i % 4) for i in range(12)]
    rows = await asyncio.gather(*(coalescer.embed(t) for t in texts))
    await coalescer.aclose()
    for text, row in zip(texts, rows, strict=True):
        assert row.tolist() == row_of(text)  # each caller got its own row
    assert max(len(p) for p in model.packs) > 1
    for pack in model.packs:
        assert len(pack) == 1 or sum(wire_bytes(t) for t in pack) <= 40


# ------------------------------------------------------- the whole client, fake Triton


async def test_embed_text_returns_the_models_row(fake: FakeTextTriton) -> None:
    async with client_for(fake) as client:
        row = await client.embed_text("héllo")
        info = await client.text_model_info()
    assert row.dtype == np.float32 and row.shape == (DIM,)
    assert row.tolist() == row_of("héllo".encode())
    assert info.context_length == 77 and info.name == TEXT_MODEL
    assert fake.shapes == [[1, 1]]


async def test_embed_text_refuses_a_non_str_before_sending(fake: FakeTextTriton) -> None:
    async with client_for(fake) as client:
        with pytest.raises(InvalidInput, match="text is a bytes"):
            await client.embed_text(b"a dog")  # type: ignore[arg-type]
        assert client.stats().failures == {"InvalidInput": 1}
    assert fake.packs == []


async def test_batch_gives_rows_in_order_and_an_error_per_bad_item(
    fake: FakeTextTriton,
) -> None:
    texts: list[Any] = ["a dog", b"bytes", "", None, "cat \ud800", "日本語", 3, "a dog"]
    async with client_for(fake, pack_batch_size=8) as client:
        result = await client.batch_embed_texts(texts)
        stats = client.stats()
    assert sorted(result.errors) == [1, 3, 4, 6]
    for index in (1, 3, 4, 6):
        error = result.errors[index]
        assert isinstance(error, InvalidInput) and f"texts[{index}]" in str(error)
        assert error.source == (texts[index] if index != 3 else "texts[3]")
        assert np.isnan(result.embeddings[index]).all()
    for index in (0, 2, 5, 7):
        assert result.embeddings[index].tolist() == row_of(texts[index].encode())
    sent = [t for pack in fake.packs for t in pack]
    assert sorted(sent) == sorted([b"a dog", b"", "日本語".encode()])  # the repeat was not sent
    assert all(shape[1] == 1 for shape in fake.shapes)
    assert stats.items == 4 and stats.failures == {"InvalidInput": 4}


async def test_a_refused_pack_is_resent_text_by_text_so_only_the_bad_text_fails(
    fake: FakeTextTriton,
) -> None:
    fake.delay_s = 0.05
    texts = [f"text {i}" for i in range(10)]
    texts[6] = REFUSED
    async with client_for(fake, pack_batch_size=8, max_in_flight=1) as client:
        result = await client.batch_embed_texts(iter(texts))
    assert list(result.errors) == [6]
    error = result.errors[6]
    assert isinstance(error, ServerError) and error.status == 400 and error.source == REFUSED
    assert max(len(p) for p in fake.packs) > 1  # it was in a pack first
    for index, text in enumerate(texts):
        if index != 6:
            assert result.embeddings[index].tolist() == row_of(text.encode())


async def test_packs_never_exceed_the_models_max_batch_size(fake: FakeTextTriton) -> None:
    fake.max_batch_size = 3
    fake.delay_s = 0.02
    texts = [f"t{i}" for i in range(20)]
    async with client_for(fake, pack_batch_size=64, max_in_flight=1) as client:
        result = await client.batch_embed_texts(texts)
    assert result.ok and len(result) == 20
    assert max(len(p) for p in fake.packs) == 3
    np.testing.assert_array_equal(result.embeddings[:, 0], [len(t) for t in texts])


async def test_a_long_generator_is_read_with_bounded_look_ahead(fake: FakeTextTriton) -> None:
    gaps: list[int] = []
    async with client_for(fake, max_in_flight=2) as client:

        def texts() -> Iterator[str]:
            for i in range(200):
                done = client.stats().items + client.stats().failed
                gaps.append(i - done)  # items taken but not yet finished
                yield f"text number {i}"

        result = await client.batch_embed_texts(texts())
        lookahead = client.config.lookahead_items
    assert result.ok and len(result) == 200
    assert max(gaps) <= lookahead


async def test_concurrent_single_texts_are_coalesced_and_each_gets_its_row(
    fake: FakeTextTriton,
) -> None:
    fake.delay_s = 0.05
    texts = [f"caller {i}" for i in range(12)]
    config = ClientConfig(coalesce=True, coalesce_open_requests=1)
    async with AsyncVisionClient(fake.base_url, "enc", config=config) as client:
        rows = await asyncio.gather(*(client.embed_text(t) for t in texts))
        stats = client.stats()
    for text, row in zip(texts, rows, strict=True):
        assert row.tolist() == row_of(text.encode())
    assert len(fake.packs) < len(texts) and max(len(p) for p in fake.packs) > 1
    assert stats.items == 12 and stats.requests == len(fake.packs)


async def test_an_overloaded_text_request_is_retried_through_the_clients_gate(
    fake: FakeTextTriton,
) -> None:
    fake.overloaded = 2
    async with client_for(fake, pack_batch_size=4) as client:
        row = await client.embed_text("a dog")
        batch = await client.batch_embed_texts(["a", "bb"])
        stats = client.stats()
    assert row.tolist() == row_of(b"a dog") and batch.ok
    assert stats.retries == 2 and stats.requests == len(fake.packs) >= 4
    assert stats.bytes_sent > 0 and stats.failed == 0


async def test_an_image_encoder_as_text_model_is_a_model_config_error(
    fake: FakeTextTriton,
) -> None:
    async with AsyncVisionClient(fake.base_url, text_model="image_encoder") as client:
        with pytest.raises(ModelConfigError, match="'image_encoder' has no input 'texts'"):
            await client.embed_text("a dog")
        with pytest.raises(ModelConfigError, match="image_encoder"):
            await client.batch_embed_texts(["a dog"])


def test_the_sync_client_returns_futures_through_its_one_runtime(
    fake_server_thread: str,
) -> None:
    with VisionClient(fake_server_thread, "enc") as client:
        row = client.embed_text("a dog").result(10)
        batch = client.batch_embed_texts(["a", 5, "bc"]).result(10)
        info = client.text_model_info().result(10)
        loop = client.runtime.loop
    assert row.tolist() == row_of(b"a dog")
    assert list(batch.errors) == [1] and "texts[1]" in str(batch.errors[1])
    assert batch.embeddings[2].tolist() == row_of(b"bc")
    assert info.context_length == 77
    assert loop is not None and loop.is_closed()


class FakeTextSite(LocalServer):
    """The fake text model in its own thread and loop (for the blocking client)."""

    name = "fake-text-triton"

    def __init__(self) -> None:
        super().__init__()
        self.model = FakeTextTriton()

    def build_app(self) -> web.Application:
        return self.model.app()


@pytest.fixture
def fake_server_thread() -> Iterator[str]:
    with FakeTextSite() as site:
        yield site.base_url
