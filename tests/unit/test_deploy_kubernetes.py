"""`tritonvision deploy kubernetes`: manifests validated offline, and agreeing with the repository.

Core kinds go through Kubernetes' own JSON schemas (the kubernetes-validate package, strict,
Kubernetes 1.30); the custom resources (KServe, ServiceMonitor, the prometheus-adapter rule)
through the minimal schemas kept in deploy/schemas/. The repository used is the committed
``model_repository/`` (configs only: nothing here needs the ONNX file or a server).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonvision import contract
from tritonvision.cli import main
from tritonvision.deploy import (
    DEFAULT_IMAGE,
    HEALTH_LIVE_PATH,
    HEALTH_READY_PATH,
    KSERVE_GRPC_PORT,
    KSERVE_HTTP_PORT,
    QUEUE_METRIC,
    QUEUE_PER_REQUEST_METRIC,
    SUCCESS_METRIC,
    KubernetesOptions,
    Manifest,
    kubernetes_manifests,
    read_repository,
    schema_path,
)
from tritonvision.errors import InvalidInput, ModelConfigError

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
K8S_VERSION = "1.30.0"
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler"}
CUSTOM_KINDS = {"InferenceService", "ServingRuntime", "ServiceMonitor"}


def _options(**overrides: Any) -> KubernetesOptions:
    values: dict[str, Any] = {"storage_uri": "s3://models/tritonvision", "max_replicas": 6}
    values.update(overrides)
    return KubernetesOptions(**values)


def _by_kind(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    out = {}
    for m in manifests:
        kind = m.document.get("kind", "PrometheusAdapterRules")
        out[kind] = m.document
    return out


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return _by_kind(kubernetes_manifests(REPOSITORY, _options()))


def _validate_custom(doc: dict[str, Any], kind: str) -> None:
    schema = json.loads(schema_path(kind).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


def _validate_core(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _pod_of(containers: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "wrapped"},
        "spec": {"containers": containers, "volumes": volumes},
    }


# ------------------------------------------------------------------- offline validation


def test_kubernetes_validate_ships_the_version_the_suite_names():
    # A named version, not "latest": the result must not change when the package updates.
    assert "1.30" in [v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()]


@pytest.mark.parametrize("kind", sorted(CORE_KINDS))
def test_core_kind_passes_kubernetes_schema_strict(docs, kind):
    # validate() returns the version it checked against; it raises on any error.
    assert kubernetes_validate.validate(docs[kind], K8S_VERSION, strict=True) == "1.30"


@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
def test_custom_resource_passes_its_schema(docs, kind):
    _validate_custom(docs[kind], kind)


def test_adapter_rules_pass_their_schema(docs):
    _validate_custom(docs["PrometheusAdapterRules"], "PrometheusAdapterRules")


def test_custom_kinds_are_unknown_to_kubernetes_validate(docs):
    # Why the repo keeps its own schemas: the package cannot check these kinds at all.
    for kind in CUSTOM_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            _validate_core(docs[kind])


def test_serving_runtime_containers_and_volumes_pass_kubernetes_schema(docs):
    spec = docs["ServingRuntime"]["spec"]
    _validate_core(_pod_of(spec["containers"], spec["volumes"]))


@pytest.mark.parametrize(
    ("kind", "path", "typo", "value"),
    [
        (
            "Deployment",
            ("spec", "template", "spec", "containers", 0),
            "readinesProbe",
            {"httpGet": {"path": "/v2/health/ready", "port": "http"}},
        ),
        ("Service", ("spec",), "selectr", {"app": "x"}),
        ("HorizontalPodAutoscaler", ("spec",), "maxReplica", 3),
    ],
)
def test_core_kind_with_a_misspelt_field_fails(docs, kind, path, typo, value):
    doc = copy.deepcopy(docs[kind])
    node: Any = doc
    for key in path:
        node = node[key]
    node[typo] = value
    with pytest.raises(kubernetes_validate.ValidationError) as info:
        _validate_core(doc)
    assert typo in info.value.message


@pytest.mark.parametrize(
    ("kind", "path", "typo"),
    [
        ("InferenceService", ("spec", "predictor", "model"), "storageURI"),
        ("InferenceService", ("spec", "predictor"), "minReplica"),
        ("ServingRuntime", ("spec",), "supportedModelFormat"),
        ("ServiceMonitor", ("spec", "endpoints", 0), "intervall"),
        ("PrometheusAdapterRules", ("rules", 0), "metricQuery"),
    ],
)
def test_custom_resource_with_a_misspelt_field_fails(docs, kind, path, typo):
    doc = copy.deepcopy(docs[kind])
    node: Any = doc
    for key in path:
        node = node[key]
    node[typo] = "x"
    with pytest.raises(jsonschema.ValidationError) as info:
        _validate_custom(doc, kind)
    assert typo in info.value.message


def test_inference_service_with_a_wrong_protocol_fails_its_schema(docs):
    doc = copy.deepcopy(docs["InferenceService"])
    doc["spec"]["predictor"]["model"]["protocolVersion"] = "v3"
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom(doc, "InferenceService")


# ------------------------------------------------------------- what the manifests say


def test_inference_service_is_triton_v2_with_storage_gpus_and_the_image_release(docs):
    isvc = docs["InferenceService"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"}
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://models/tritonvision"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    # KServe swaps the runtime image's tag for runtimeVersion: it must be the image's tag.
    assert model["runtimeVersion"] == DEFAULT_IMAGE.rsplit(":", 1)[1]
    assert model["runtime"] == docs["ServingRuntime"]["metadata"]["name"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 6)


def test_serving_runtime_runs_the_image_on_kserve_ports(docs):
    container = docs["ServingRuntime"]["spec"]["containers"][0]
    assert container["image"] == DEFAULT_IMAGE
    assert f"--http-port={KSERVE_HTTP_PORT}" in container["args"]
    assert f"--grpc-port={KSERVE_GRPC_PORT}" in container["args"]
    assert (KSERVE_HTTP_PORT, KSERVE_GRPC_PORT) == (8080, 9000)


def test_deployment_probes_gpus_shm_and_non_root(docs):
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == HEALTH_READY_PATH
    assert container["startupProbe"]["httpGet"]["path"] == HEALTH_READY_PATH
    assert container["livenessProbe"]["httpGet"]["path"] == HEALTH_LIVE_PATH
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def test_deployment_reads_the_repository_from_the_storage_uri(docs):
    args = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model-repository=s3://models/tritonvision" in args


def test_service_is_cluster_internal_with_http_grpc_and_metrics(docs):
    spec = docs["Service"]["spec"]
    assert spec["type"] == "ClusterIP"
    assert {p["name"] for p in spec["ports"]} == {"http", "grpc", "metrics"}
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= pod_labels.items()


def test_service_monitor_scrapes_the_service_metrics_port(docs):
    monitor = docs["ServiceMonitor"]["spec"]
    assert (
        monitor["selector"]["matchLabels"].items() <= docs["Service"]["metadata"]["labels"].items()
    )
    assert monitor["endpoints"][0]["port"] == "metrics"
    assert monitor["endpoints"][0]["path"] == "/metrics"


def test_hpa_scales_the_deployment_on_the_adapter_metric(docs):
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 6)
    metric = hpa["metrics"][0]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == QUEUE_PER_REQUEST_METRIC
    rule = docs["PrometheusAdapterRules"]["rules"][0]
    assert rule["name"]["as"] == QUEUE_PER_REQUEST_METRIC
    assert QUEUE_METRIC in rule["metricsQuery"] and SUCCESS_METRIC in rule["metricsQuery"]
    # Queue microseconds divided by requests: average queue time per request.
    queue_part, success_part = rule["metricsQuery"].split(" / ", 1)
    assert QUEUE_METRIC in queue_part and SUCCESS_METRIC in success_part


# --------------------------------------------------- agreement with repository and serve


def _configs(repository: Path) -> dict[str, mc.ModelConfig]:
    out = {}
    for path in repository.glob("*/config.pbtxt"):
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        out[config.name or path.parent.name] = config
    return out


def test_manifests_name_exactly_the_repository_models(docs):
    configs = _configs(REPOSITORY)
    assert contract.DEFAULT_MODEL in configs
    annotated = docs["InferenceService"]["metadata"]["annotations"]["tritonvision.io/models"]
    assert sorted(annotated.split(",")) == sorted(configs)
    pod_annotations = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations["tritonvision.io/models"] == annotated
    # The queue metric is summed over the models Triton schedules (ensembles only route).
    query = docs["PrometheusAdapterRules"]["rules"][0]["metricsQuery"]
    regexes = set(re.findall(r'model=~"([^"]+)"', query))
    assert len(regexes) == 1
    scheduled = {name for name, c in configs.items() if c.platform != "ensemble"}
    assert set(regexes.pop().split("|")) == scheduled


def test_ports_are_serve_and_contract_defaults(docs):
    from tritonvision.serve import DEFAULT_PORTS

    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "http": contract.DEFAULT_HTTP_PORT,
        "grpc": contract.DEFAULT_GRPC_PORT,
        "metrics": contract.DEFAULT_METRICS_PORT,
    }
    assert ports == {
        "http": DEFAULT_PORTS.http,
        "grpc": DEFAULT_PORTS.grpc,
        "metrics": DEFAULT_PORTS.metrics,
    }
    args = container["args"]
    for name, port in ports.items():
        assert f"--{name}-port={port}" in args
    service_ports = {p["name"]: p["port"] for p in docs["Service"]["spec"]["ports"]}
    assert service_ports == ports
    runtime = docs["ServingRuntime"]["spec"]
    assert runtime["annotations"]["prometheus.kserve.io/port"] == str(ports["metrics"])


def test_shm_is_sized_from_the_python_backend_models(tmp_path):
    configs = _configs(REPOSITORY)
    preprocess = configs[contract.preprocess_name(contract.DEFAULT_MODEL)]
    assert preprocess.backend == "python"
    base = read_repository(REPOSITORY).shm_bytes(gpus=1)
    # Twice the python-backend instances: more shared memory, by a whole number of MiB.
    doubled = tmp_path / "repo"
    for name, config in configs.items():
        (doubled / name).mkdir(parents=True)
        if config.backend == "python":
            for group in config.instance_group:
                group.count *= 2
        (doubled / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    more = read_repository(doubled).shm_bytes(gpus=1)
    assert more > base and base % (1024 * 1024) == 0
    size = kubernetes_manifests(doubled, _options())[2].document["spec"]["template"]["spec"][
        "volumes"
    ][0]["emptyDir"]["sizeLimit"]
    assert size == f"{more // (1024 * 1024)}Mi"


# ------------------------------------------------------------------ errors and the CLI


@pytest.mark.parametrize(
    "overrides",
    [
        {"storage_uri": "http://example.com/models"},
        {"storage_uri": "s3://"},
        {"image": "registry.local:5000/tritonvision/tritonserver"},
        {"image": "tritonvision/tritonserver@sha256:" + "0" * 64},
        {"min_replicas": 3, "max_replicas": 2},
        {"name": "Triton_Vision"},
        {"gpus": 0},
    ],
)
def test_bad_options_are_refused(overrides):
    with pytest.raises(InvalidInput):
        _options(**overrides)


def test_image_with_registry_port_keeps_its_tag_as_runtime_version():
    image = "registry.local:5000/tritonvision/tritonserver:24.10-py3-build7"
    isvc = _by_kind(kubernetes_manifests(REPOSITORY, _options(image=image)))["InferenceService"]
    assert isvc["spec"]["predictor"]["model"]["runtimeVersion"] == "24.10-py3-build7"


def test_repository_with_a_misnamed_model_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.pbtxt").write_text('name: "b"\nbackend: "python"\n')
    with pytest.raises(ModelConfigError, match="differs from its folder"):
        read_repository(tmp_path)
    with pytest.raises(ModelConfigError, match="holds no"):
        read_repository(tmp_path / "a")


def test_cli_writes_manifests_that_validate(tmp_path, capsys):
    out = tmp_path / "manifests"
    code = main(
        [
            "deploy",
            "kubernetes",
            "--repository",
            str(REPOSITORY),
            "--storage-uri",
            "gs://bucket/repo",
            "--output",
            str(out),
            "--gpus",
            "2",
            "--min-replicas",
            "2",
            "--max-replicas",
            "5",
            "--image",
            "ghcr.io/acme/tritonserver:24.10-py3",
        ]
    )
    assert code == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.yaml"))
    assert written == sorted(capsys.readouterr().out.replace(str(out) + "/", "").split())
    loaded = {}
    for path in out.rglob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        kind = doc.get("kind", "PrometheusAdapterRules")
        loaded[kind] = doc
        if kind in CORE_KINDS:
            _validate_core(doc)
        else:
            _validate_custom(doc, kind)
    assert set(loaded) == CORE_KINDS | CUSTOM_KINDS | {"PrometheusAdapterRules"}
    assert loaded["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2
    assert loaded["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 5
    pod = loaded["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["containers"][0]["image"] == "ghcr.io/acme/tritonserver:24.10-py3"
    model = loaded["InferenceService"]["spec"]["predictor"]["model"]
    assert model["storageUri"] == "gs://bucket/repo"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_cli_refuses_a_bad_storage_uri_with_usage_exit(tmp_path, capsys):
    code = main(
        [
            "deploy",
            "kubernetes",
            "--repository",
            str(REPOSITORY),
            "--storage-uri",
            "/local/path",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "s3://bucket/path" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_administrative_apis_need_the_admin_key_and_the_client_apis_stay_open(docs):
    from tritonvision.deploy import RESTRICTED_APIS

    runtime = docs["ServingRuntime"]["spec"]["containers"][0]
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for c in (runtime, container):
        env = {e["name"]: e for e in c["env"]}
        rules = [a for a in c["args"] if "restricted" in a]
        assert len(rules) == 2, c["args"]
        for rule in rules:
            apis, _, header = rule.split("=", 1)[1].partition(":")
            assert set(apis.split(",")) == set(RESTRICTED_APIS)
            # The key comes from a Secret through $(VAR) expansion, never from the manifest.
            var = re.fullmatch(r"x-admin-key=\$\((\w+)\)", header)
            assert var, header
            ref = env[var.group(1)]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "tritonvision-admin" and "optional" not in ref
    # What tritonvision's client calls must not be restricted.
    assert not {"inference", "health", "metadata", "model-config"} & set(RESTRICTED_APIS)
