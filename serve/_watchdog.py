"""The lifeline between a :class:`LocalTriton` owner and its ``tritonserver``.

Run as a script (stdlib only, no package import, so it starts in milliseconds)::

    python -I _watchdog.py --lifeline FD --report FD --shm-prefix P [--remove PATH]... -- CMD...

:class:`Supervised` is the owner's side, which starts it. The owner keeps the write end
of a pipe (the *lifeline*) and hands the read end to this
process, which starts ``CMD`` (``tritonserver``) in a session and process group of its
own. The read end sees EOF when the owner closes it in ``stop()`` *or when the owner
process dies in any way*, SIGKILL included: the kernel closes a dead process's fds, and
only whole processes die, not threads, so it does not matter which thread started us.
On EOF (or SIGTERM / SIGHUP) we stop the server (SIGTERM, then SIGKILL to its whole
process group after ``--grace-s``, or at most 2 s when the owner died without writing
``stop``: the python-backend stubs are its children), unlink the
stubs' shared-memory regions (``/dev/shm/<shm-prefix>*``), remove the ``--remove``
paths and exit. SIGINT is ignored: a Ctrl-C reaches the owner, which stops us through the
lifeline.

Should this watchdog itself be SIGKILLed, the server gets SIGKILL too, on Linux, through
``PR_SET_PDEATHSIG`` (this process is single-threaded, so the thread that forked the
server lives as long as the process); the stubs then notice their parent is gone and exit.
Elsewhere (macOS has no PDEATHSIG) only the lifeline applies.

On the report pipe we write ``pid <server pid>`` once the server is started (or
``error <why>`` if it cannot be) and ``exit <code>`` (negative: killed by that signal)
when it exits on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "SHM_DIR",
    "Supervised",
    "SupervisorError",
    "kill_group",
    "main",
    "remove_paths",
    "unlink_shm_regions",
]

SHM_DIR = Path("/dev/shm")
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.1
_STOP = b"stop"
_ORPHAN_GRACE_S = 2.0


def unlink_shm_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove the shared-memory files named ``prefix*``; returns what was removed."""
    removed: list[Path] = []
    if not prefix:
        return removed
    with contextlib.suppress(OSError):
        for path in shm_dir.glob(prefix + "*"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def remove_paths(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGKILL this child when its parent (this watchdog) dies."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def preexec() -> None:
        # SIG_IGN survives exec; the server should see Ctrl-C as usual when sent to it.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died before prctl took effect.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _exited(pid: int) -> int | None:
    """The exit code if ``pid`` has exited, leaving it a zombie: its pid (and so its process
    group id) cannot be reused before we reap it, so ``killpg`` cannot hit a stranger."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return 0
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status


def _stop_server(server: subprocess.Popen[bytes], grace_s: float) -> None:
    if _exited(server.pid) is None:
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _exited(server.pid) is None and time.monotonic() < deadline:
            time.sleep(_POLL_S)
    # Stubs that are still exiting, or a server past its grace: the whole group, while the
    # (possibly zombie) leader still holds the group id.
    kill_group(server.pid)
    server.wait()


def _write(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, text.encode())


class SupervisorError(RuntimeError):
    """The watchdog did not report the command as started (see the log for why)."""


class Supervised:
    """A command running behind the watchdog: the owner's side of the lifeline.

    Example::

        with open(log, "wb") as out:
            server = Supervised.start(["tritonserver", ...], log=out, remove=[workdir])
        ...
        server.stop()   # or let this process die: the watchdog does the same

    The command runs in its own session (``pid`` is its process group id). The lifeline's
    write end is close-on-exec and passed to no child, so only this process holds it; a
    child forked *without* exec (``multiprocessing`` "fork") would inherit it and keep the
    server alive until it exits too.
    """

    def __init__(self, watchdog: subprocess.Popen[bytes], lifeline: int, report: int) -> None:
        self._watchdog: subprocess.Popen[bytes] | None = watchdog
        self._lifeline: int | None = lifeline
        self._report: int | None = report
        self._buffer = b""
        self._pid: int | None = None
        self._exit_code: int | None = None
        self._error = ""

    @classmethod
    def start(
        cls,
        command: Sequence[str],
        *,
        log: IO[bytes] | None = None,
        env: Mapping[str, str] | None = None,
        shm_prefix: str = "",
        remove: Sequence[Path] = (),
        grace_s: float = 20.0,
        report_timeout_s: float = 30.0,
    ) -> Supervised:
        """Start ``command`` behind a watchdog; return once it is running (it has a pid)."""
        lifeline_r, lifeline_w = os.pipe()
        report_r, report_w = os.pipe()
        watchdog_cmd = [
            sys.executable,
            "-I",  # stdlib only: no site-packages, no PYTHON* variables, no cwd on sys.path
            str(Path(__file__).resolve()),
            f"--lifeline={lifeline_r}",
            f"--report={report_w}",
            f"--shm-prefix={shm_prefix}",
            f"--grace-s={grace_s}",
            *(f"--remove={path}" for path in remove),
            "--",
            *command,
        ]
        try:
            watchdog = subprocess.Popen(
                watchdog_cmd,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                pass_fds=(lifeline_r, report_w),
            )
        except BaseException:
            os.close(lifeline_w)
            os.close(report_r)
            raise
        finally:
            os.close(lifeline_r)
            os.close(report_w)
        supervised = cls(watchdog, lifeline_w, report_r)
        try:
            supervised._wait_for_pid(report_timeout_s)
        except BaseException:
            supervised.stop()
            raise
        return supervised

    @property
    def pid(self) -> int:
        """The command's pid, which is also its process group id."""
        assert self._pid is not None
        return self._pid

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog is not None else None

    def _read_report(self, timeout_s: float) -> bool:
        """Take in what the watchdog reported within ``timeout_s``; False once it is gone."""
        if self._report is None:
            return False
        readable, _, _ = select.select([self._report], [], [], max(0.0, timeout_s))
        if not readable:
            return True
        chunk = os.read(self._report, 4096)
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        for line in lines:
            kind, _, value = line.decode(errors="replace").partition(" ")
            if kind == "pid" and value.isdigit():
                self._pid = int(value)
            elif kind == "exit":
                self._exit_code = int(value)
            elif kind == "error":
                self._error = value
        return bool(chunk)

    def _wait_for_pid(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._pid is None:
            remaining = deadline - time.monotonic()
            if self._error:
                raise SupervisorError(self._error)
            if remaining <= 0:
                raise SupervisorError(f"the watchdog reported nothing within {timeout_s:.0f}s")
            if not self._read_report(remaining) and self._pid is None:
                raise SupervisorError(self._error or "the watchdog exited before starting it")

    def exit_code(self) -> int | None:
        """The command's exit code once it has exited (negative: killed by that signal)."""
        if self._exit_code is None:
            self._read_report(0)
        if self._exit_code is None and self._watchdog is not None:
            code = self._watchdog.poll()
            if code is not None:
                self._exit_code = code
        return self._exit_code

    def stop(self, timeout_s: float = 40.0) -> None:
        """Close the lifeline and wait for the watchdog's cleanup; do it here if it hangs."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        if self._lifeline is not None:
            with contextlib.suppress(OSError):  # the watchdog may be gone already
                os.write(self._lifeline, _STOP)
            os.close(self._lifeline)
            self._lifeline = None
        try:
            watchdog.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            watchdog.kill()  # PDEATHSIG takes the command with it
            watchdog.wait()
            if self._pid is not None:
                kill_group(self._pid)
            raise
        finally:
            if self._report is not None:
                os.close(self._report)
                self._report = None


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tritonvision-serve-watchdog")
    parser.add_argument("--lifeline", type=int, required=True)
    parser.add_argument("--report", type=int, required=True)
    parser.add_argument("--shm-prefix", default="")
    parser.add_argument("--grace-s", type=float, default=20.0)
    parser.add_argument("--remove", type=Path, action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command to run")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    stop_r, stop_w = os.pipe()
    os.set_blocking(stop_w, False)
    signal.set_wakeup_fd(stop_w)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: None)
    try:
        server = subprocess.Popen(
            args.command,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # preexec_fn is unsafe with threads; this process has one.
            preexec_fn=_die_with_parent(os.getpid()),
        )
    except OSError as exc:
        # Reported, not printed: the log may be inside a path we are about to remove.
        _write(args.report, f"error cannot start {args.command[0]}: {exc}\n")
        remove_paths(args.remove)
        return 127
    _write(args.report, f"pid {server.pid}\n")

    running = True
    asked_to_stop = False
    while True:
        readable, _, _ = select.select([args.lifeline, stop_r], [], [], _POLL_S)
        if stop_r in readable:
            break  # SIGTERM / SIGHUP
        if args.lifeline in readable:
            try:
                data = os.read(args.lifeline, 4096)
            except OSError:
                data = b""
            if not data:
                break  # the owner closed the lifeline or died
            asked_to_stop = asked_to_stop or _STOP in data
        if running:
            code = _exited(server.pid)
            if code is not None:
                running = False
                kill_group(server.pid)
                server.wait()
                _write(args.report, f"exit {code}\n")
                # Keep the log and the work dir until the owner is done reading them.

    if running:
        # An owner that died waits for nothing: free the ports soon for the next server.
        _stop_server(server, args.grace_s if asked_to_stop else min(args.grace_s, _ORPHAN_GRACE_S))
    unlink_shm_regions(args.shm_prefix)
    remove_paths(args.remove)
    return 0


if __name__ == "__main__":
    sys.exit(main())
