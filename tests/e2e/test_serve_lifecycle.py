"""`tritonvision serve` never outlives itself, cleans up after itself, and refuses a broken
environment: checked with the real tritonserver and real processes.

The end-to-end tests run ``python -m tritonvision serve`` as a subprocess with its own
``TMPDIR`` and SIGKILL it, so what a killed ``serve`` leaves behind can be counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tritonvision.serve import ServeError, check_stub_environment, free_port
from tritonvision.serve._watchdog import Supervised, SupervisorError
from tritonvision.serve._workdir import (
    OWNER_FILE,
    OwnerRecord,
    claim_workdir,
    process_start_time,
    remove_dead_leftovers,
)

# A killed serve's Triton must be gone within this many seconds (Triton's own graceful
# shutdown takes a few seconds on a loaded 2-core machine).
ORPHANS_GONE_S = 20.0

PYTRITON_REQUIRES = ["numpy<2.0.0,>=1.21", "protobuf>=3.7", 'pytest~=8.1.1; extra == "test"']


# ------------------------------------------------------------------ environment check


def _versions(**found: str):
    def version(name: str) -> str:
        from importlib.metadata import PackageNotFoundError

        key = name.lower().replace("-", "_")
        if key not in found:
            raise PackageNotFoundError(name)
        return found[key]

    return version


def test_stub_check_names_numpy_2_with_the_version_found_and_needed() -> None:
    with pytest.raises(ServeError) as info:
        check_stub_environment(
            version=_versions(nvidia_pytriton="0.7.0", numpy="2.1.3", protobuf="5.0"),
            requires=lambda name: PYTRITON_REQUIRES,
            libpython_found=lambda: True,
        )
    message = str(info.value)
    assert "numpy 2.1.3 is installed" in message
    assert "numpy<2.0.0,>=1.21" in message
    assert "nvidia-pytriton 0.7.0" in message


def test_stub_check_names_a_missing_numpy_and_a_missing_libpython() -> None:
    with pytest.raises(ServeError) as info:
        check_stub_environment(
            version=_versions(nvidia_pytriton="0.7.0"),
            requires=lambda name: PYTRITON_REQUIRES,
            libpython_found=lambda: False,
        )
    message = str(info.value)
    assert "numpy is not installed" in message
    assert "libpython" in message


def test_stub_check_accepts_numpy_1_and_ignores_packages_the_stub_does_not_load() -> None:
    check_stub_environment(
        version=_versions(nvidia_pytriton="0.7.0", numpy="1.26.4", protobuf="1.0"),
        requires=lambda name: PYTRITON_REQUIRES,
        libpython_found=lambda: True,
    )


def test_stub_check_passes_in_this_environment() -> None:
    check_stub_environment()


def test_warm_up_sends_the_key_of_restricted_inference_and_config_apis() -> None:
    from tritonvision.serve._preflight import restricted_api_headers

    args = (
        "--http-restricted-api=model-config,inference:x-admin-key=SECRET",
        "--http-restricted-api",
        "model-repository:x-repo=OTHER",
        "--grpc-restricted-protocol=inference:x-grpc=G",
    )
    assert restricted_api_headers(args) == {"x-admin-key": "SECRET"}


# ------------------------------------------------------------- leftovers of dead servers


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """A live process; tests put what it 'names' on its command line."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*names: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *names])
        procs.append(proc)
        # Until exec, the child still shows the parent's command line.
        deadline = time.monotonic() + 10
        while names[-1].encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _workdir(root: Path, name: str, record: OwnerRecord | None) -> Path:
    path = root / f"tritonvision-serve-{name}"
    path.mkdir()
    (path / "tritonserver.log").write_text("log")
    if record is not None:
        record.write(path)
    return path


def test_start_removes_only_leftovers_it_can_prove_dead(
    tmp_path: Path, sleeper: Callable[..., subprocess.Popen[bytes]]
) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    me = OwnerRecord(os.getpid(), process_start_time(os.getpid()), "p_")
    dead = OwnerRecord(_dead_pid(), 1, "p_")
    reused = OwnerRecord(os.getpid(), (me.start_time or 0) + 1, "p_")  # same pid, other start
    dead_dir = _workdir(tmp_path, "dead", dead)
    reused_dir = _workdir(tmp_path, "reused", reused)
    live_dir = _workdir(tmp_path, "live", me)
    unclaimed_dir = _workdir(tmp_path, "unclaimed", None)
    named_dir = _workdir(tmp_path, "named", dead)  # owner dead, its tritonserver still running
    live_prefix = "triton_python_backend_shm_region_tv123_0123abcd_"
    dead_prefix = "triton_python_backend_shm_region_tv456_89abcdef_"
    (shm / f"{live_prefix}uuid1").write_bytes(b"x")
    (shm / f"{dead_prefix}uuid2").write_bytes(b"x")
    (shm / "triton_python_backend_shm_region_uuid3").write_bytes(b"x")  # not ours: kept
    sleeper(str(named_dir), f"--backend-config=python,shm-region-prefix-name={live_prefix}")

    removed = remove_dead_leftovers(tmp_path, shm_dir=shm)

    assert sorted(removed) == sorted([dead_dir, reused_dir, shm / f"{dead_prefix}uuid2"])
    assert not dead_dir.exists() and not reused_dir.exists()
    assert live_dir.exists() and unclaimed_dir.exists() and named_dir.exists()
    assert sorted(p.name for p in shm.iterdir()) == [
        f"{live_prefix}uuid1",
        "triton_python_backend_shm_region_uuid3",
    ]


def test_owner_record_names_this_process_and_a_unique_shm_prefix(tmp_path: Path) -> None:
    first = claim_workdir(tmp_path)
    data = json.loads((tmp_path / OWNER_FILE).read_text())
    assert data["pid"] == os.getpid()
    assert data["start_time"] == process_start_time(os.getpid())
    assert first.shm_prefix != claim_workdir(tmp_path).shm_prefix


# ------------------------------------------------------------------ the watchdog alone

# Starts a grandchild in its own process group (like tritonserver's stubs), prints both
# pids, then sleeps.
_TREE = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(child.pid, flush=True)
    time.sleep(120)
    """
)

# The owner starts the watchdog from a thread that then exits, prints the pids, and waits
# to be killed.
_OWNER = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from tritonvision.serve._watchdog import Supervised, SupervisorError

    box = []
    def start():
        with open(sys.argv[1], "wb") as log:
            box.append(Supervised.start(
                [sys.executable, "-c", sys.argv[3]], log=log, remove=[Path(sys.argv[2])]
            ))
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    print(box[0].pid, box[0].watchdog_pid, flush=True)
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    stat = process_start_time(pid)
    if stat is None:
        return False
    # A zombie waiting for its parent is dead for our purpose.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _wait_gone(pids: list[int], timeout_s: float) -> float:
    start = time.monotonic()
    while any(_alive(p) for p in pids):
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"still running after {timeout_s}s: {[p for p in pids if _alive(p)]}")
        time.sleep(0.05)
    return time.monotonic() - start


def test_watchdog_outlives_the_starting_thread_and_kills_the_group_when_the_owner_dies(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    log = tmp_path / "log"
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(log), str(workdir), _TREE],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    try:
        server_pid, watchdog_pid = (int(x) for x in owner.stdout.readline().split())
        deadline = time.monotonic() + 30
        while not log.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(log.read_text().split()[0])
        time.sleep(1.0)  # the starting thread is long gone: nothing may have fired
        assert all(_alive(p) for p in (server_pid, grandchild, watchdog_pid))
        assert os.getpgid(grandchild) == server_pid  # the stubs' situation

        owner.kill()
        owner.wait()
        seconds = _wait_gone([server_pid, grandchild, watchdog_pid], 10.0)
        print(f"owner SIGKILLed: its command tree was gone after {seconds:.2f} s")
        assert not workdir.exists()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdout.close()


def test_supervised_reports_a_command_that_exits_by_itself_and_stop_cleans_up(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    supervised = Supervised.start(
        [sys.executable, "-c", "import sys; sys.exit(3)"], remove=[workdir]
    )
    deadline = time.monotonic() + 10
    while supervised.exit_code() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert supervised.exit_code() == 3
    assert workdir.exists()  # kept until the owner is done with the log
    supervised.stop()
    supervised.stop()
    assert not workdir.exists()


def test_a_sigkilled_watchdog_takes_the_command_with_it(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with open(log, "wb") as out:
        supervised = Supervised.start([sys.executable, "-c", _TREE], log=out)
    try:
        assert supervised.watchdog_pid is not None
        os.kill(supervised.watchdog_pid, signal.SIGKILL)
        seconds = _wait_gone([supervised.pid], 10.0)  # PR_SET_PDEATHSIG
        print(f"watchdog SIGKILLed: its command was gone after {seconds:.2f} s")
    finally:
        supervised.stop()
        # The grandchild: tritonserver's stubs notice a dead parent, a plain sleeper does not.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervised.pid, signal.SIGKILL)


def test_supervised_command_that_cannot_start_raises_naming_it(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    missing = str(tmp_path / "no-such-tritonserver")
    with pytest.raises(SupervisorError, match=r"cannot start .*no-such-tritonserver"):
        Supervised.start([missing], remove=[workdir])
    assert not workdir.exists()


# ---------------------------------------------------------------- real tritonserver


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _processes_naming(text: str) -> list[int]:
    needle = text.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return [p for p in pids if _alive(p)]


class Serve:
    """``python -m tritonvision serve`` in a subprocess with a TMPDIR of its own."""

    def __init__(self, repository: Path, ports: list[int], tmpdir: Path, *extra: str) -> None:
        env = dict(os.environ, TMPDIR=str(tmpdir), TRITONVISION_ORT_THREADS="1")
        self.ports = ports
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tritonvision",
                "serve",
                "--repository",
                str(repository),
                "--http-port",
                str(ports[0]),
                "--grpc-port",
                str(ports[1]),
                "--metrics-port",
                str(ports[2]),
                "--cpu-instances",
                "1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []

    def wait_ready(self) -> Path:
        """Read until the endpoints are printed; return the log's folder."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "metrics" in line:
                break
        text = "".join(self.lines)
        assert f"http://127.0.0.1:{self.ports[0]}" in text, text + self.stderr()
        log = next(ln for ln in self.lines if "log:" in ln).split("log: ")[1].strip(")\n")
        return Path(log).parent

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.e2e
def test_sigkilled_serve_takes_triton_with_it_and_the_next_serve_gets_the_ports(
    tiny_repository: Path, tmp_path: Path
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    ports = [free_port(), free_port(), free_port()]

    first = Serve(tiny_repository, ports, tmpdir)
    try:
        workdir = first.wait_ready()
        tree = _processes_naming(str(workdir))  # the watchdog, tritonserver, the stubs
        stubs = [p for p in tree if b"stub" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(tree) >= 3 and stubs, tree
        shm_prefix = json.loads((workdir / OWNER_FILE).read_text())["shm_prefix"]

        killed = time.monotonic()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        gone_s = _wait_gone(tree, ORPHANS_GONE_S)
        while any(_port_open(p) for p in ports):
            assert time.monotonic() - killed < ORPHANS_GONE_S, "ports still open"
            time.sleep(0.05)
        ports_s = time.monotonic() - killed
        print(
            f"serve SIGKILLed: tritonserver + {len(stubs)} stubs gone after {gone_s:.2f} s, "
            f"ports closed after {ports_s:.2f} s"
        )
        assert _processes_naming(str(workdir)) == []
        assert not workdir.exists()
        assert not list(Path("/dev/shm").glob(shm_prefix + "*"))
    finally:
        first.close()

    second = Serve(tiny_repository, ports, tmpdir, "--log-file", str(tmp_path / "kept.log"))
    try:
        assert second.wait_ready() == tmp_path  # where --log-file put the log
        (workdir,) = tmpdir.iterdir()
        assert workdir.name.startswith("tritonvision-serve-")
        assert _processes_naming(str(workdir))
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=60) == 0, second.stderr()
        assert second.proc.stdout is not None
        assert "Triton stopped" in second.proc.stdout.read()
        assert list(tmpdir.iterdir()) == []  # the work dir and whatever Triton put in TMPDIR
        assert _processes_naming(str(workdir)) == []
        assert "Started HTTPService" in (tmp_path / "kept.log").read_text()
    finally:
        second.close()


EMPTY_MODEL_PY = '''\
"""Answers every request with an empty tensor, as the stub does under NumPy 2."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        empty = np.zeros((0, 16), dtype=np.float32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("embeddings", empty)])
                for _ in requests]
'''


@pytest.fixture(scope="module")
def empty_output_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    repo = tmp_path_factory.mktemp("empty-output-repo")
    (repo / "hollow_encoder" / "1").mkdir(parents=True)
    (repo / "hollow_encoder" / "1" / "model.py").write_text(EMPTY_MODEL_PY)
    config = mc.ModelConfig(name="hollow_encoder", backend="python", max_batch_size=4)
    config.input.add(name="pixels", data_type=mc.TYPE_UINT8, dims=[8, 8, 3])
    config.output.add(name="embeddings", data_type=mc.TYPE_FP32, dims=[16])
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    (repo / "hollow_encoder" / "config.pbtxt").write_text(text_format.MessageToString(config))
    return repo


@pytest.mark.e2e
def test_serve_fails_naming_a_model_that_answers_empty_outputs_and_leaves_nothing(
    empty_output_repository: Path, tmp_path: Path
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    ports = [free_port(), free_port(), free_port()]
    serve = Serve(empty_output_repository, ports, tmpdir)
    try:
        code = serve.proc.wait(timeout=180)
        stderr = serve.stderr()
        assert code == 1, stderr
        assert "'hollow_encoder'" in stderr and "warm-up" in stderr, stderr
        assert "shape (0, 16), expected (1, 16)" in stderr, stderr
        assert list(tmpdir.iterdir()) == []
        assert not any(_port_open(p) for p in ports)
    finally:
        serve.close()
