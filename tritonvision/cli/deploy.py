"""``tritonvision deploy kubernetes``: write KServe and plain Kubernetes manifests for a repository.

A thin face over :func:`tritonvision.deploy.kubernetes_manifests`; docs/DEPLOY.md explains
what each file is for.
"""

from __future__ import annotations

import argparse
import sys

from ._common import EXIT_OK, EXIT_USAGE, SubParsers, positive_int

__all__ = ["register"]


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="generate deployment manifests for a model repository",
        description="Generate deployment manifests from a model repository.",
    )
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    kube = targets.add_parser(
        "kubernetes",
        help="KServe InferenceService, Deployment, Service, ServiceMonitor, HPA",
        description="Write KServe (kserve/), plain Kubernetes (kubernetes/) and "
        "prometheus-adapter (prometheus-adapter/) YAML into --output. Model names and "
        "/dev/shm come from the repository's configs; publish the same repository to "
        "--storage-uri.",
    )
    kube.add_argument("--repository", default="model_repository", help="model repository")
    kube.add_argument(
        "--storage-uri",
        required=True,
        metavar="URI",
        help="where the repository is published: s3://bucket/path or gs://bucket/path",
    )
    kube.add_argument("--output", required=True, metavar="DIR", help="folder to write into")
    kube.add_argument("--gpus", type=positive_int, default=1, help="GPUs per pod (default 1)")
    kube.add_argument("--min-replicas", type=positive_int, default=1, help="(default 1)")
    kube.add_argument("--max-replicas", type=positive_int, default=4, help="(default 4)")
    kube.add_argument(
        "--image",
        default=None,
        help="server image built from deploy/docker/Dockerfile, with a tag "
        "(default tritonvision/tritonserver:<Triton release>)",
    )
    kube.add_argument(
        "--name", default="tritonvision", help="name of the objects (default tritonvision)"
    )
    kube.add_argument(
        "--target-queue-us",
        type=positive_int,
        default=None,
        help="HPA target: average queue time per request in microseconds (default 20000)",
    )
    kube.set_defaults(func=run_kubernetes)


def run_kubernetes(args: argparse.Namespace) -> int:
    # Imported here: `tritonvision --help` should not pay for protobuf and tritonclient.
    from tritonvision.deploy import (
        DEFAULT_IMAGE,
        DEFAULT_TARGET_QUEUE_US,
        KubernetesOptions,
        kubernetes_manifests,
        write_manifests,
    )
    from tritonvision.errors import InvalidInput, ModelConfigError

    try:
        options = KubernetesOptions(
            storage_uri=args.storage_uri,
            image=args.image or DEFAULT_IMAGE,
            name=args.name,
            gpus=args.gpus,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            target_queue_us=args.target_queue_us or DEFAULT_TARGET_QUEUE_US,
        )
        manifests = kubernetes_manifests(args.repository, options)
    except (InvalidInput, ModelConfigError) as exc:
        print(f"tritonvision deploy kubernetes: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for path in write_manifests(manifests, args.output):
        print(path)
    return EXIT_OK
