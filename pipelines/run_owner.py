"""Which process owns an MLflow run, recorded as run tags when the run is made.

A process killed outright (SIGKILL, the OOM killer, a timeout) cannot end its runs, which then
stay RUNNING for good. The tags let a later process on the same host tell such a run from one
whose process is still working: the pid alone is not enough, since the system hands a dead
process's number to a new one, so the process's start (boot, pid namespace, start time, from
Linux's /proc) is recorded beside it. Pure bookkeeping: no MLflow here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

TAG_HOST = "owner.host"
TAG_PID = "owner.pid"
TAG_START = "owner.start"  # "<boot id> <pid namespace> <start time in clock ticks>"
TAG_SETTLED = "owner.settled"  # why another process ended the run


def _space() -> tuple[str, str] | None:
    """This boot and this process's pid namespace (pids are only meaningful within both)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return boot, os.readlink("/proc/self/ns/pid")
    except OSError:
        return None  # not Linux


def _stat(pid: int) -> tuple[str, str] | None:
    """Process `pid`'s state letter and start time (clock ticks after boot); None if none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (name) state ppid ...": the name may hold spaces and parentheses
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """The tags naming process `pid` (default: this one) as a run's owner."""
    pid = os.getpid() if pid is None else pid
    tags = {TAG_HOST: socket.gethostname(), TAG_PID: str(pid)}
    space, stat = _space(), _stat(pid)
    if space is not None and stat is not None:
        tags[TAG_START] = f"{space[0]} {space[1]} {stat[1]}"
    return tags


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


def owner_gone(tags: Mapping[str, str]) -> str | None:
    """Why the run's owner process has surely ended, or None (alive, or no way to tell: a run
    without owner tags, another host's, another pid namespace's)."""
    host, pid = tags.get(TAG_HOST), tags.get(TAG_PID, "")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    who = f"process {pid} on {host}"
    recorded, space = tags.get(TAG_START, "").split(), _space()
    if space is None or len(recorded) != 3:  # no start time to compare: only a missing pid tells
        return None if _exists(int(pid)) else f"{who} has ended"
    boot, namespace, start = recorded
    if boot != space[0]:
        return f"{who} has ended: the machine restarted since"
    if namespace != space[1]:
        return None  # another container's pid numbers: not ours to judge
    stat = _stat(int(pid))
    if stat is None or stat[0] in ("Z", "X"):  # a zombie is dead, only not yet reaped
        return f"{who} has ended"
    if stat[1] != start:
        return f"{who} has ended (its pid now belongs to another process)"
    return None


def settled_note(reason: str) -> str:
    """The tag saying why a run was ended by another process than its own."""
    return (
        f"{reason} without ending the run (killed?): marked FAILED by process {os.getpid()} "
        f"on {socket.gethostname()}"
    )
