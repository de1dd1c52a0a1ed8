"""Kubernetes manifests for a model repository, as data: KServe, plain Deployment, autoscaling.

:func:`kubernetes_manifests` returns one :class:`Manifest` (a relative path and one document)
per file; :func:`write_manifests` writes them as YAML. Everything that must agree with the
repository comes from it (model names, ``/dev/shm`` for the python-backend stubs) or from the
contract (Triton's ports), so manifests and repository cannot drift apart::

    DIR/kserve/servingruntime.yaml          ServingRuntime: this image, KServe's ports 8080/9000
    DIR/kserve/inferenceservice.yaml        InferenceService: storageUri, GPUs, replicas
    DIR/kubernetes/deployment.yaml          Triton pods: probes, GPUs, /dev/shm, non-root
    DIR/kubernetes/service.yaml             ClusterIP: http, grpc, metrics
    DIR/kubernetes/servicemonitor.yaml      Prometheus Operator scrape of /metrics
    DIR/kubernetes/hpa.yaml                 autoscaling/v2 on queue time per request
    DIR/prometheus-adapter/rules.yaml       the custom-metrics rule the HPA reads
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tritonvision.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from tritonvision.errors import InvalidInput, ModelConfigError

from ._repository import MIB, RepositorySummary, read_repository

# The constants below are public through ``tritonvision.deploy``; this lists the code.
__all__ = [
    "KubernetesOptions",
    "Manifest",
    "image_tag",
    "kubernetes_manifests",
    "render_manifest",
    "write_manifests",
]

Document = dict[str, Any]

# ------------------------------------------------------------------ images, ports, paths

TRITON_RELEASE = "24.10-py3"
"""NVIDIA's Triton container release: deploy/docker/Dockerfile's FROM and docker-compose.yml."""
TRITON_BASE_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}"
DEFAULT_IMAGE = f"tritonvision/tritonserver:{TRITON_RELEASE}"
"""deploy/docker/Dockerfile built and tagged as docker-compose.yml does; push it and pass
``--image`` with your registry's name."""
CONTAINER_UID = 1000
"""The image's non-root user (``USER 1000:1000`` in the Dockerfile)."""

# KServe's Triton runtime listens on these (its own kserve-tritonserver runtime does too).
KSERVE_HTTP_PORT = 8080
KSERVE_GRPC_PORT = 9000
KSERVE_MODEL_DIR = "/mnt/models"
"""Where KServe's storage initializer puts ``storageUri``."""

HEALTH_LIVE_PATH = "/v2/health/live"
HEALTH_READY_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"

# Triton's metric and label names, as its /metrics spells them (a test scrapes them).
QUEUE_METRIC = "nv_inference_queue_duration_us"
SUCCESS_METRIC = "nv_inference_request_success"
MODEL_LABEL = "model"
QUEUE_PER_REQUEST_METRIC = "tritonvision_queue_us_per_request"
"""The custom metric prometheus-adapter serves to the HPA (microseconds per request)."""

# Administrative APIs that need the admin header (SECURITY.md, checked with Triton 2.51). The
# client uses only health, metadata, model-config and inference, which stay open in-cluster.
RESTRICTED_APIS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
ADMIN_KEY_HEADER = "x-admin-key"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"

DEFAULT_TARGET_QUEUE_US = 20_000
"""Scale out when requests wait 20 ms in Triton's queues on average (10x the default
2 ms batching delay: batching alone never triggers it, a backlog does)."""

_RATE_WINDOW = "2m"
_STORAGE_SCHEMES = ("s3://", "gs://")
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_GPU = "nvidia.com/gpu"


@dataclass(frozen=True, kw_only=True)
class KubernetesOptions:
    """What ``tritonvision deploy kubernetes`` takes besides the repository."""

    storage_uri: str
    """Where the repository is published (``s3://bucket/path`` or ``gs://bucket/path``)."""
    image: str = DEFAULT_IMAGE
    name: str = "tritonvision"
    gpus: int = 1
    min_replicas: int = 1
    max_replicas: int = 4
    target_queue_us: int = DEFAULT_TARGET_QUEUE_US

    def __post_init__(self) -> None:
        if not self.storage_uri.startswith(_STORAGE_SCHEMES) or not self.storage_uri.split(
            "://", 1
        )[1].strip("/"):
            raise InvalidInput(
                f"storage URI {self.storage_uri!r}: give s3://bucket/path or gs://bucket/path "
                "(the schemes both KServe's storage initializer and Triton itself can read)"
            )
        if not _NAME.match(self.name):
            raise InvalidInput(
                f"name {self.name!r}: lower-case letters, digits and '-', starting with a "
                "letter, at most 42 characters (a DNS label with room for suffixes)"
            )
        for what, value in (
            ("gpus", self.gpus),
            ("min_replicas", self.min_replicas),
            ("target_queue_us", self.target_queue_us),
        ):
            if value < 1:
                raise InvalidInput(f"{what} must be >= 1, got {value}")
        if self.max_replicas < self.min_replicas:
            raise InvalidInput(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        image_tag(self.image)  # raises on an image without a tag

    @property
    def runtime_name(self) -> str:
        return f"{self.name}-triton"

    @property
    def admin_secret(self) -> str:
        """Secret (key ``admin-key``) holding the header value of the restricted APIs."""
        return f"{self.name}-admin"

    @property
    def storage_secret(self) -> str:
        """Optional Secret whose keys become the pod's environment (AWS_*/GOOGLE_* creds)."""
        return f"{self.name}-storage"


@dataclass(frozen=True)
class Manifest:
    """One generated file: its path relative to the output folder and its one document."""

    path: str
    document: Document


def image_tag(image: str) -> str:
    """The tag of ``registry[:port]/repo:tag``; KServe's ``runtimeVersion`` must equal it."""
    last = image.rsplit("/", 1)[-1]
    if "@" in last or ":" not in last or not last.split(":", 1)[1]:
        raise InvalidInput(
            f"image {image!r} needs a tag (repo:tag): KServe's runtimeVersion replaces the tag, "
            "so a digest or an untagged image cannot be pinned"
        )
    return last.split(":", 1)[1]


# ------------------------------------------------------------------------ building blocks


def _selector(options: KubernetesOptions) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": options.name,
        "app.kubernetes.io/component": "inference-server",
    }


def _labels(options: KubernetesOptions) -> dict[str, str]:
    """The selector's labels and two informational ones."""
    return {
        **_selector(options),
        "app.kubernetes.io/part-of": "tritonvision",
        "app.kubernetes.io/managed-by": "tritonvision-deploy",
    }


def _mib(n_bytes: int) -> str:
    return f"{-(-n_bytes // MIB)}Mi"


def _shm_volume(summary: RepositorySummary, options: KubernetesOptions) -> Document:
    # The python backend's stubs exchange tensors with the server through /dev/shm; the
    # container runtime's default of 64 MiB fails a full batch of images.
    return {
        "name": "dshm",
        "emptyDir": {"medium": "Memory", "sizeLimit": _mib(summary.shm_bytes(options.gpus))},
    }


def _container_security() -> Document:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": CONTAINER_UID,
        "runAsGroup": CONTAINER_UID,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security() -> Document:
    return {
        "runAsNonRoot": True,
        "runAsUser": CONTAINER_UID,
        "runAsGroup": CONTAINER_UID,
        "fsGroup": CONTAINER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _writable_mounts() -> list[Document]:
    # The root filesystem is read-only: Triton localises s3/gs repositories under /tmp and
    # the python backend unpacks EXECUTION_ENV_PATH archives there.
    return [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]


def _restricted_api_args() -> list[str]:
    # Kubernetes expands $(VAR) in args from the container's env: the key never appears
    # in the manifest.
    apis = ",".join(RESTRICTED_APIS)
    rule = f"{apis}:{ADMIN_KEY_HEADER}=$({ADMIN_KEY_ENV})"
    return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]


def _admin_key_env(options: KubernetesOptions) -> list[Document]:
    # Not optional: a missing Secret keeps the pod from starting rather than leaving the
    # administrative APIs behind a literal "$(TRITON_ADMIN_KEY)".
    return [
        {
            "name": ADMIN_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": options.admin_secret, "key": "admin-key"}},
        }
    ]


def _http_probe(path: str, *, period_s: int, failures: int) -> Document:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _models_annotation(summary: RepositorySummary) -> dict[str, str]:
    return {"tritonvision.io/models": ",".join(summary.model_names)}


def _model_regex(summary: RepositorySummary) -> str:
    names = summary.scheduled_model_names
    if not names:
        raise ModelConfigError(f"{summary.path}: no model that Triton schedules (only ensembles)")
    for name in names:
        if not _MODEL_NAME.match(name):
            raise ModelConfigError(
                f"model name {name!r} cannot be matched safely in a PromQL regex; "
                "use letters, digits, '_' and '-'"
            )
    return "|".join(names)


# ------------------------------------------------------------------------------- KServe


def serving_runtime(summary: RepositorySummary, options: KubernetesOptions) -> Document:
    """A ServingRuntime running this image (the stock one lacks the preprocess model's code)."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": options.runtime_name, "labels": _labels(options)},
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(DEFAULT_METRICS_PORT),
                "prometheus.kserve.io/path": METRICS_PATH,
            },
            # Only InferenceServices that name this runtime use it.
            "supportedModelFormats": [{"name": "triton", "version": "2", "autoSelect": False}],
            "protocolVersions": ["v2", "grpc-v2"],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": options.image,
                    # The image's ENTRYPOINT is tritonserver; these are its arguments.
                    "args": [
                        f"--model-store={KSERVE_MODEL_DIR}",
                        f"--http-port={KSERVE_HTTP_PORT}",
                        f"--grpc-port={KSERVE_GRPC_PORT}",
                        f"--metrics-port={DEFAULT_METRICS_PORT}",
                        "--allow-http=true",
                        "--allow-grpc=true",
                        "--strict-readiness=true",
                        *_restricted_api_args(),
                    ],
                    "env": _admin_key_env(options),
                    "securityContext": _container_security(),
                    "volumeMounts": _writable_mounts(),
                }
            ],
            "volumes": [_shm_volume(summary, options), {"name": "tmp", "emptyDir": {}}],
        },
    }


def inference_service(summary: RepositorySummary, options: KubernetesOptions) -> Document:
    """The KServe InferenceService serving the published repository."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": options.name,
            "labels": _labels(options),
            "annotations": {
                "serving.kserve.io/enable-prometheus-scraping": "true",
                **_models_annotation(summary),
            },
        },
        "spec": {
            "predictor": {
                "minReplicas": options.min_replicas,
                "maxReplicas": options.max_replicas,
                "model": {
                    "modelFormat": {"name": "triton"},
                    "runtime": options.runtime_name,
                    "protocolVersion": "v2",
                    "runtimeVersion": image_tag(options.image),
                    "storageUri": options.storage_uri,
                    "resources": {"limits": {_GPU: options.gpus}},
                },
            }
        },
    }


# ------------------------------------------------------------------- plain Kubernetes


def deployment(summary: RepositorySummary, options: KubernetesOptions) -> Document:
    """Triton pods reading the repository straight from object storage."""
    args = [
        f"--model-repository={options.storage_uri}",
        f"--http-port={DEFAULT_HTTP_PORT}",
        f"--grpc-port={DEFAULT_GRPC_PORT}",
        f"--metrics-port={DEFAULT_METRICS_PORT}",
        "--strict-readiness=true",
        # Finish in-flight requests on SIGTERM, inside terminationGracePeriodSeconds.
        "--exit-timeout-secs=30",
        *_restricted_api_args(),
    ]
    container = {
        "name": "triton",
        "image": options.image,
        "args": args,
        "ports": [
            {"name": "http", "containerPort": DEFAULT_HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": DEFAULT_GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": DEFAULT_METRICS_PORT, "protocol": "TCP"},
        ],
        "env": _admin_key_env(options),
        "envFrom": [{"secretRef": {"name": options.storage_secret, "optional": True}}],
        "resources": {"limits": {_GPU: options.gpus}},
        # Loading (and a TensorRT engine build) can take minutes: the startup probe allows
        # 15, and liveness/readiness only start once it has passed.
        "startupProbe": _http_probe(HEALTH_READY_PATH, period_s=10, failures=90),
        "livenessProbe": _http_probe(HEALTH_LIVE_PATH, period_s=10, failures=3),
        "readinessProbe": _http_probe(HEALTH_READY_PATH, period_s=5, failures=3),
        "securityContext": _container_security(),
        "volumeMounts": _writable_mounts(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": options.name, "labels": _labels(options)},
        # No `replicas`: the HPA owns it (re-applying would otherwise reset the scale).
        "spec": {
            "selector": {"matchLabels": _selector(options)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": _labels(options),
                    "annotations": _models_annotation(summary),
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 40,
                    "securityContext": _pod_security(),
                    "containers": [container],
                    "volumes": [_shm_volume(summary, options), {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def service(options: KubernetesOptions) -> Document:
    """ClusterIP only: Triton has no authentication, so nothing faces outside the cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": options.name, "labels": _labels(options)},
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(options),
            "ports": [
                {"name": "http", "port": DEFAULT_HTTP_PORT, "targetPort": "http"},
                {
                    "name": "grpc",
                    "port": DEFAULT_GRPC_PORT,
                    "targetPort": "grpc",
                    "appProtocol": "grpc",
                },
                {"name": "metrics", "port": DEFAULT_METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }


def service_monitor(options: KubernetesOptions) -> Document:
    """Prometheus Operator scrape of Triton's /metrics through the Service's metrics port."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": options.name, "labels": _labels(options)},
        "spec": {
            "selector": {"matchLabels": _selector(options)},
            "endpoints": [{"port": "metrics", "path": METRICS_PATH, "interval": "15s"}],
        },
    }


def adapter_rules(summary: RepositorySummary, options: KubernetesOptions) -> Document:
    """prometheus-adapter's rule: queue microseconds per successful request, per pod.

    Summed over the repository's scheduled models (ensembles only route requests). An idle
    pod reads 0, not "no data", so the HPA can scale down.
    """
    matchers = f'<<.LabelMatchers>>,{MODEL_LABEL}=~"{_model_regex(summary)}"'
    queue = f"sum(rate({QUEUE_METRIC}{{{matchers}}}[{_RATE_WINDOW}])) by (<<.GroupBy>>)"
    success = f"sum(rate({SUCCESS_METRIC}{{{matchers}}}[{_RATE_WINDOW}])) by (<<.GroupBy>>)"
    return {
        "rules": [
            {
                # ServiceMonitor scrapes carry namespace, pod and service labels.
                "seriesQuery": f'{QUEUE_METRIC}{{namespace!="",pod!="",service="{options.name}"}}',
                "resources": {
                    "overrides": {
                        "namespace": {"resource": "namespace"},
                        "pod": {"resource": "pod"},
                    }
                },
                "name": {"matches": f"^{QUEUE_METRIC}$", "as": QUEUE_PER_REQUEST_METRIC},
                "metricsQuery": f"{queue} / clamp_min({success}, 0.001)",
            }
        ]
    }


def horizontal_pod_autoscaler(options: KubernetesOptions) -> Document:
    """Scale the Deployment on average queue time per request (the adapter's metric)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": options.name, "labels": _labels(options)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_PER_REQUEST_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(options.target_queue_us),
                        },
                    },
                }
            ],
            # A GPU pod takes minutes to become ready: add one at a time and wait for it to
            # absorb load; give capacity back slowly so a lull does not drop warm pods.
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 60,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 600,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                },
            },
        },
    }


# ---------------------------------------------------------------------------- public API


def kubernetes_manifests(
    repository: str | Path | RepositorySummary, options: KubernetesOptions
) -> list[Manifest]:
    """Every manifest for ``repository`` (a folder, or an already read summary).

    Raises :class:`ModelConfigError` for a repository that cannot be read and
    :class:`InvalidInput` (from :class:`KubernetesOptions`) for bad options.
    """
    summary = (
        repository if isinstance(repository, RepositorySummary) else read_repository(repository)
    )
    return [
        Manifest("kserve/servingruntime.yaml", serving_runtime(summary, options)),
        Manifest("kserve/inferenceservice.yaml", inference_service(summary, options)),
        Manifest("kubernetes/deployment.yaml", deployment(summary, options)),
        Manifest("kubernetes/service.yaml", service(options)),
        Manifest("kubernetes/servicemonitor.yaml", service_monitor(options)),
        Manifest("kubernetes/hpa.yaml", horizontal_pod_autoscaler(options)),
        Manifest("prometheus-adapter/rules.yaml", adapter_rules(summary, options)),
    ]


def render_manifest(manifest: Manifest) -> str:
    """The YAML text of one manifest, with a header saying where it came from."""
    header = "# Generated by `tritonvision deploy kubernetes`; regenerate it, do not edit.\n"
    body = yaml.safe_dump(manifest.document, sort_keys=False, default_flow_style=False, width=100)
    return header + body


def write_manifests(manifests: Sequence[Manifest], output: str | Path) -> list[Path]:
    """Write each manifest under ``output`` (created as needed); returns the paths written."""
    root = Path(output)
    written = []
    for manifest in manifests:
        path = root / manifest.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_manifest(manifest))
        written.append(path)
    return written
