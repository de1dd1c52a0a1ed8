"""``tritonvision demo``: the main job on the embedded default, start to finish.

Export the built-in encoder (if the repository has no model yet), start the real local
Triton, embed the sample photos that installed packages ship through the client (HTTP
and gRPC) and through the raw-bytes ensemble, print a short report, stop the server.

Exit codes (:mod:`._common`): 0 done; 1 no sample photos to embed.
"""

from __future__ import annotations

import argparse
import base64
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tritonvision.contract import (
    DEFAULT_MODEL,
    EMBEDDINGS_OUTPUT,
    IMAGES_INPUT,
    PARAM_SOURCE,
    PARAM_TRAINED,
    ensemble_name,
)
from tritonvision.export import DEFAULT_REPOSITORY

from ._common import EXIT_FAILED, EXIT_OK, SubParsers

__all__ = ["register", "run_demo"]


def register(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``tritonvision`` subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="export the default encoder, serve it locally, embed sample photos, stop",
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--name", default=DEFAULT_MODEL)
    parser.add_argument("--reexport", action="store_true", help="export even if model.onnx exists")
    parser.set_defaults(func=run_demo)
    return parser


def _ensemble_embeddings(http_url: str, model: str, blobs: list[bytes]) -> npt.NDArray[Any]:
    # Straight through tritonclient, to show the server-side (raw bytes) path agrees.
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url.removeprefix("http://"))
    try:
        data = np.array([[b] for b in blobs], dtype=object)
        inp = httpclient.InferInput(IMAGES_INPUT, [len(blobs), 1], "BYTES")
        inp.set_data_from_numpy(data, binary_data=True)
        result: npt.NDArray[Any] = client.infer(ensemble_name(model), [inp]).as_numpy(
            EMBEDDINGS_OUTPUT
        )
        return result
    finally:
        client.close()


def run_demo(args: argparse.Namespace) -> int:
    """The ``demo`` handler; returns the exit code (see the module docstring)."""
    from tritonvision._samples import sample_photo_paths
    from tritonvision.client import VisionClient
    from tritonvision.export import ExportOptions, export_model, repository_files
    from tritonvision.serve import LocalTriton, ServerPorts, free_port

    from .export import format_summary

    repository: Path = args.repository
    options = ExportOptions(repository=repository, name=args.name)
    model_file = repository_files(options).model
    if args.reexport or not model_file.exists():
        print(f"[1/4] exporting the built-in default encoder to {repository} ...", flush=True)
        result = export_model(options)
        print(format_summary(result), flush=True)
    else:
        print(f"[1/4] using the exported model {model_file}", flush=True)

    photos = sample_photo_paths()
    if not photos:
        print("no sample photos found (install matplotlib or scikit-image)")
        return EXIT_FAILED

    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    print("[2/4] starting the local Triton ...", flush=True)
    started = time.perf_counter()
    with LocalTriton(repository, ports=ports) as server:
        print(
            f"      ready in {time.perf_counter() - started:.1f}s at {server.http_url} "
            f"and {server.grpc_url}",
            flush=True,
        )
        blobs = [p.read_bytes() for p in photos]
        # Every input kind the client takes, in one batch: paths, base64, data: URI, raw bytes.
        sources: list[Any] = [str(p) for p in photos[:-2]]
        sources.append(base64.b64encode(blobs[-2]).decode())
        sources.append(blobs[-1])
        sources.append("no-such-photo.jpg")  # shows a per-item error, not a failed batch

        print(f"[3/4] embedding {len(sources)} inputs ...", flush=True)
        with VisionClient(server.http_url, args.name) as client:
            info = client.model_info().result()
            batch = client.batch_embed_images(sources).result()
            stats = client.stats()
        with VisionClient(server.grpc_url, args.name) as grpc_client:
            via_grpc = grpc_client.embed_image(photos[0]).result()
        via_ensemble = _ensemble_embeddings(server.http_url, args.name, blobs)

        params = info.config.parameters
        print(
            f"\nmodel {args.name}: {info.embedding_dim}-d embeddings, "
            f"max_batch_size {info.max_batch_size}, source {params.get(PARAM_SOURCE)}, "
            f"trained={params.get(PARAM_TRAINED)}, "
            f"input {info.input_name} {info.preprocessing.output_shape} uint8"
        )
        print(f"{'input':<34} {'status':<8} {'norm':>6}  first values")
        for i, source in enumerate(sources):
            label = (
                Path(source).name
                if isinstance(source, str) and len(source) < 200
                else f"<{type(source).__name__}, {len(source)}>"
            )
            if i in batch.errors:
                print(f"{label:<34} {'error':<8} {'':>6}  {batch.errors[i]}")
                continue
            vec = batch.embeddings[i]
            print(
                f"{label:<34} {'ok':<8} {np.linalg.norm(vec):6.3f}  "
                + " ".join(f"{v:+.3f}" for v in vec[:4])
            )
        good = [i for i in range(len(photos)) if i not in batch.errors]
        sims = batch.embeddings[good] @ batch.embeddings[good].T
        print("\ncosine similarity between the photos:")
        for row in sims:
            print("  " + " ".join(f"{v:5.2f}" for v in row))
        agree_grpc = float(via_grpc @ batch.embeddings[0])
        agree_ens = [
            float(a @ b) for a, b in zip(via_ensemble, batch.embeddings[: len(photos)], strict=True)
        ]
        print(f"\nHTTP vs gRPC on {photos[0].name}: cosine {agree_grpc:.6f}")
        print(
            "client-side preprocessing vs the raw-bytes ensemble (server-side): "
            f"min cosine {min(agree_ens):.6f} over {len(agree_ens)} photos"
        )
        print(f"client stats: {stats}")
        print(
            "\nnote: the built-in default has seeded, UNTRAINED weights: the vectors are "
            "deterministic but carry no meaning. Export a real checkpoint with "
            "`tritonvision export --checkpoint DIR`."
        )
    print("[4/4] Triton stopped.")
    return EXIT_OK
