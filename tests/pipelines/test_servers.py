"""pipelines.servers without a running server: how processes are started and stopped."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipelines.servers import start_prefect_server


def _nice_and_cmdline(pid: int) -> tuple[int, str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    nice = int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return nice, cmdline


def _is_prefect(cmdline: str) -> bool:
    return "prefect server start" in cmdline and not cmdline.startswith("nice")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("nice", [0, 10])
def test_prefect_server_runs_at_the_requested_niceness(tmp_path, nice):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    server = start_prefect_server(tmp_path, nice=nice, wait=False)
    try:
        # `nice` execs prefect in the same process: wait until it has (the command line
        # reads empty for a moment during the exec).
        deadline = time.monotonic() + 30
        value, cmdline = _nice_and_cmdline(server.proc.pid)
        while not _is_prefect(cmdline) and server.alive and time.monotonic() < deadline:
            time.sleep(0.05)
            value, cmdline = _nice_and_cmdline(server.proc.pid)
        assert _is_prefect(cmdline), (cmdline, server.log_path.read_text(errors="replace"))
        assert value == min(19, base + nice)
    finally:
        server.stop()
    assert not server.alive
