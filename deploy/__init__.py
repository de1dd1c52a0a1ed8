"""Deployment manifests generated from a model repository (Kubernetes, KServe).

Example::

    from tritonvision.deploy import KubernetesOptions, kubernetes_manifests, write_manifests

    options = KubernetesOptions(storage_uri="s3://models/tritonvision", gpus=1, max_replicas=8)
    write_manifests(kubernetes_manifests("model_repository", options), "deploy-out")

The manifests are data (:class:`Manifest`: a relative path and one document), so tests and
tools can inspect them before anything is written. The JSON schemas under ``schemas/`` cover
the custom resources we emit (see :func:`schema_path`); the container image is
``deploy/docker/Dockerfile``. docs/DEPLOY.md describes the three ways to run.
"""

from __future__ import annotations

from pathlib import Path

from ._kubernetes import (
    CONTAINER_UID,
    DEFAULT_IMAGE,
    DEFAULT_TARGET_QUEUE_US,
    HEALTH_LIVE_PATH,
    HEALTH_READY_PATH,
    KSERVE_GRPC_PORT,
    KSERVE_HTTP_PORT,
    KSERVE_MODEL_DIR,
    METRICS_PATH,
    MODEL_LABEL,
    QUEUE_METRIC,
    QUEUE_PER_REQUEST_METRIC,
    RESTRICTED_APIS,
    SUCCESS_METRIC,
    TRITON_BASE_IMAGE,
    TRITON_RELEASE,
    KubernetesOptions,
    Manifest,
    image_tag,
    kubernetes_manifests,
    render_manifest,
    write_manifests,
)
from ._repository import ModelSummary, RepositorySummary, read_repository

__all__ = [
    "CONTAINER_UID",
    "DEFAULT_IMAGE",
    "DEFAULT_TARGET_QUEUE_US",
    "HEALTH_LIVE_PATH",
    "HEALTH_READY_PATH",
    "KSERVE_GRPC_PORT",
    "KSERVE_HTTP_PORT",
    "KSERVE_MODEL_DIR",
    "METRICS_PATH",
    "MODEL_LABEL",
    "QUEUE_METRIC",
    "QUEUE_PER_REQUEST_METRIC",
    "RESTRICTED_APIS",
    "SCHEMA_DIR",
    "SUCCESS_METRIC",
    "TRITON_BASE_IMAGE",
    "TRITON_RELEASE",
    "KubernetesOptions",
    "Manifest",
    "ModelSummary",
    "RepositorySummary",
    "image_tag",
    "kubernetes_manifests",
    "read_repository",
    "render_manifest",
    "schema_path",
    "write_manifests",
]

SCHEMA_DIR = Path(__file__).parent / "schemas"
"""Minimal JSON schemas of the custom resources we emit (package data)."""


def schema_path(kind: str) -> Path:
    """The schema file for a custom ``kind`` (e.g. ``InferenceService``); ``KeyError`` if none."""
    path = SCHEMA_DIR / f"{kind.lower()}.schema.json"
    if not path.is_file():
        raise KeyError(f"no schema for kind {kind!r} in {SCHEMA_DIR}")
    return path
