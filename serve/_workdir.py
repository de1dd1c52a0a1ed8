"""The work dir of one local Triton, and the removal of dead servers' leftovers.

Each server gets ``<tempdir>/tritonvision-serve-XXXX/`` holding its runtime repository,
its log (unless ``--log-file``) and ``owner.json``: the owner's pid and that process's
start time, and the shared-memory prefix of its python-backend stubs. Stopping removes
the dir; a SIGKILLed owner's watchdog removes it too. What a crash of the whole machine
or of the watchdog leaves behind is removed by the next start, but only when it is
*proven* dead (Linux ``/proc``):

- the owner pid is gone, or now belongs to a process started at another time (pid reuse);
- no live process names the work dir on its command line (the watchdog, ``tritonserver``
  and every stub do: the runtime repository is inside it);
- the dir belongs to this user and has an ``owner.json`` (a dir without one may be a
  server being created right now).

A stub's shared-memory region (``/dev/shm/<prefix>*``, the prefix unique per server) is
dead when no live process names its prefix: ``tritonserver`` has it on its command line
from before the first region exists until it exits, and each stub names its own region.

Without ``/proc`` nothing can be proven, so nothing is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._watchdog import SHM_DIR

__all__ = [
    "OWNER_FILE",
    "WORKDIR_PREFIX",
    "OwnerRecord",
    "claim_workdir",
    "create_workdir",
    "process_start_time",
    "remove_dead_leftovers",
]

logger = logging.getLogger(__name__)

WORKDIR_PREFIX = "tritonvision-serve-"
OWNER_FILE = "owner.json"
# The python backend's own prefix, extended with the work dir's unique suffix: the regions
# of one server can then be found by name after all its processes are gone.
_SHM_PREFIX_BASE = "triton_python_backend_shm_region_tv"
_SHM_REGION = re.compile("(" + re.escape(_SHM_PREFIX_BASE) + r"\d+_[0-9a-f]{8}_)")
_PROC = Path("/proc")


def process_start_time(pid: int, proc: Path = _PROC) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


@dataclass(frozen=True)
class OwnerRecord:
    """Who owns a work dir; written once, before the server starts."""

    pid: int
    start_time: int | None
    shm_prefix: str

    def write(self, workdir: Path) -> None:
        tmp = workdir / (OWNER_FILE + ".tmp")
        tmp.write_text(
            json.dumps(
                {"pid": self.pid, "start_time": self.start_time, "shm_prefix": self.shm_prefix}
            )
        )
        tmp.replace(workdir / OWNER_FILE)

    @classmethod
    def read(cls, workdir: Path) -> OwnerRecord | None:
        try:
            data = json.loads((workdir / OWNER_FILE).read_text())
            start = data["start_time"]
            return cls(
                pid=int(data["pid"]),
                start_time=None if start is None else int(start),
                shm_prefix=str(data["shm_prefix"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def create_workdir(parent: Path | None = None) -> tuple[Path, OwnerRecord]:
    """A fresh work dir with this process as its recorded owner."""
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=parent))
    return workdir, claim_workdir(workdir)


def claim_workdir(workdir: Path) -> OwnerRecord:
    """Record this process as the owner of ``workdir`` (which exists)."""
    record = OwnerRecord(
        pid=os.getpid(),
        start_time=process_start_time(os.getpid()),
        shm_prefix=f"{_SHM_PREFIX_BASE}{os.getpid()}_{secrets.token_hex(4)}_",
    )
    record.write(workdir)
    return record


def _owner_alive(record: OwnerRecord, proc: Path) -> bool:
    start = process_start_time(record.pid, proc)
    if start is None:
        return False
    # A recorded start time that differs: the pid now belongs to someone else.
    return record.start_time is None or start == record.start_time


def _live_command_lines(proc: Path) -> list[bytes]:
    lines: list[bytes] = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                lines.append((entry / "cmdline").read_bytes())
    return lines


def _dead_shm_regions(shm_dir: Path, live: list[bytes], candidates: list[Path]) -> list[Path]:
    """Regions of our naming scheme that no live ``tritonserver`` or stub names.

    ``tritonserver`` carries the prefix on its command line from before the first region
    exists until it exits, and each stub carries its region's full name.
    """
    dead: list[Path] = []
    for path in candidates:
        match = _SHM_REGION.match(path.name)
        if match is None:
            continue
        prefix = os.fsencode(match.group(1))
        if not any(prefix in line for line in live):
            dead.append(path)
    return dead


def _owned_by_me(path: Path) -> bool:
    try:
        return path.lstat().st_uid == os.getuid()
    except OSError:
        return False


def remove_dead_leftovers(
    tempdir: Path | None = None, *, proc: Path = _PROC, shm_dir: Path = SHM_DIR
) -> list[Path]:
    """Remove the work dirs and stub shared memory of servers proven dead; returns them."""
    if not proc.is_dir():
        return []
    root = Path(tempdir or tempfile.gettempdir())
    # Listed before the processes are read: whatever a server starting later creates is
    # not a candidate, and what a running server created is named by one of its processes.
    workdirs = [
        d for d in sorted(root.glob(WORKDIR_PREFIX + "*")) if _owned_by_me(d) and d.is_dir()
    ]
    regions: list[Path] = []
    with contextlib.suppress(OSError):
        regions = [p for p in sorted(shm_dir.glob(_SHM_PREFIX_BASE + "*")) if _owned_by_me(p)]
    if not workdirs and not regions:
        return []  # nothing to prove dead: skip reading every process's command line
    live = _live_command_lines(proc)
    removed: list[Path] = []
    for workdir in workdirs:
        if workdir.is_symlink():
            continue
        record = OwnerRecord.read(workdir)
        if record is None or _owner_alive(record, proc):
            continue
        if any(os.fsencode(str(workdir)) in line for line in live):
            continue
        shutil.rmtree(workdir, ignore_errors=True)
        if not workdir.exists():
            removed.append(workdir)
    for region in _dead_shm_regions(shm_dir, live, regions):
        with contextlib.suppress(OSError):
            region.unlink()
            removed.append(region)
    if removed:
        logger.info("removed the leftovers of servers no longer running: %s", removed)
    return removed
