"""The served repository against NVIDIA's own clients and plain HTTP, on the real tritonserver."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def _jpeg(
    color: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "JPEG"
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def _pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)


def _post_json(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_encoder_answers_kserve_v2_json_with_normalised_embeddings(triton):
    pixels = _pixels(2)
    status, body = _post_json(
        f"{triton.http_url}/v2/models/{triton.model}/infer",
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": list(pixels.shape),
                    "datatype": "UINT8",
                    "data": pixels.reshape(-1).tolist(),
                }
            ]
        },
    )
    assert status == 200, body
    out = body["outputs"][0]
    assert out["name"] == "embeddings" and out["datatype"] == "FP32"
    assert out["shape"] == [2, triton.embedding_dim]
    vectors = np.asarray(out["data"], dtype=np.float32).reshape(2, -1)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_encoder_binary_http_and_grpc_agree_with_onnx_runtime_in_process(triton):
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    pixels = _pixels(3, seed=1)
    onnx_path = triton.repository / triton.model / "1" / "model.onnx"
    expected = ort.InferenceSession(str(onnx_path)).run(["embeddings"], {"pixels": pixels})[0]

    http = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels, binary_data=True)
        out = httpclient.InferRequestedOutput("embeddings", binary_data=True)
        got_http = http.infer(triton.model, [inp], outputs=[out]).as_numpy("embeddings")
    finally:
        http.close()

    grpc = grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://"))
    try:
        ginp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        ginp.set_data_from_numpy(pixels)
        got_grpc = grpc.infer(triton.model, [ginp]).as_numpy("embeddings")
        config = grpc.get_model_config(triton.model, as_json=True)["config"]
    finally:
        grpc.close()

    np.testing.assert_allclose(got_http, expected, atol=1e-5)
    np.testing.assert_allclose(got_grpc, expected, atol=1e-5)
    assert "tritonvision.preprocessing" in config["parameters"]


def test_images_ensemble_embeds_raw_jpeg_and_png_bytes(triton):
    import tritonclient.http as httpclient

    blobs = [_jpeg((200, 30, 30)), _jpeg((20, 200, 40), fmt="PNG")]
    data = np.array([[b] for b in blobs], dtype=object)
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("images", [2, 1], "BYTES")
        inp.set_data_from_numpy(data, binary_data=True)
        result = client.infer(triton.images_model, [inp]).as_numpy("embeddings")
    finally:
        client.close()
    assert result.shape == (2, triton.embedding_dim)
    assert np.isfinite(result).all()
    np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1.0, atol=1e-4)
    # Different images, different embeddings: the pixels really flowed through.
    assert float(result[0] @ result[1]) < 0.9999


def test_corrupt_image_gets_error_naming_it_and_server_keeps_serving(triton):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        bad = np.array([[_jpeg((1, 2, 3))], [b"this is not an image"]], dtype=object)
        inp = httpclient.InferInput("images", [2, 1], "BYTES")
        inp.set_data_from_numpy(bad, binary_data=True)
        with pytest.raises(InferenceServerException) as info:
            client.infer(triton.images_model, [inp])
        assert "images[1]" in str(info.value)

        good = np.array([[_jpeg((9, 9, 9))]], dtype=object)
        inp = httpclient.InferInput("images", [1, 1], "BYTES")
        inp.set_data_from_numpy(good, binary_data=True)
        assert client.infer(triton.images_model, [inp]).as_numpy("embeddings").shape == (
            1,
            triton.embedding_dim,
        )
        assert client.is_model_ready(triton.images_model)
    finally:
        client.close()


def _stats(triton, model: str) -> dict:
    with urllib.request.urlopen(f"{triton.http_url}/v2/models/{model}/stats", timeout=10) as r:
        return json.loads(r.read())["model_stats"][0]


def test_dynamic_batching_merges_concurrent_single_requests(triton):
    import tritonclient.http as httpclient

    before = _stats(triton, triton.model)
    n_threads, per_thread = 16, 8
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
        try:
            barrier.wait()
            for i in range(per_thread):
                inp = httpclient.InferInput("pixels", [1, 32, 32, 3], "UINT8")
                inp.set_data_from_numpy(_pixels(1, seed * 100 + i), binary_data=True)
                client.infer(triton.model, [inp])
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    after = _stats(triton, triton.model)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == n_threads * per_thread
    # Triton's dynamic batcher must have merged requests: far fewer executions than requests.
    assert executions < inferences * 0.75, (inferences, executions)
    print(
        f"dynamic batching: {inferences} requests in {executions} executions "
        f"(ratio {inferences / executions:.2f})"
    )


def test_warm_up_makes_up_inputs_for_the_encoder_the_preprocess_model_and_the_ensemble(triton):
    from tritonvision.contract import preprocess_name
    from tritonvision.serve._preflight import warm_up

    models = [triton.model, preprocess_name(triton.model), triton.images_model]
    assert warm_up(triton.http_url, models) == models


def test_warm_up_fails_naming_a_model_that_is_not_served(triton):
    from tritonvision.serve import ServeError
    from tritonvision.serve._preflight import warm_up

    with pytest.raises(ServeError, match="model 'no_such_model'"):
        warm_up(triton.http_url, [triton.model, "no_such_model"])
