"""pipelines.serve's Ctrl-C guarantee, in a child process (it installs a SIGINT handler)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from pipelines.serve import exit_after_interrupt
exit_after_interrupt(grace={grace})
print("ready", flush=True)
while True:
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        if not {swallow}:
            raise
        print("swallowed", flush=True)  # a runner that loses the interrupt
"""


def _interrupt(tmp_path: Path, grace: float, swallow: bool) -> tuple[int, str, float]:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), grace=grace, swallow=swallow))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        return proc.returncode, out, time.monotonic() - t0
    finally:
        proc.kill()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_swallowed_interrupt_still_ends_the_process_after_the_grace(tmp_path):
    code, out, seconds = _interrupt(tmp_path, grace=1.0, swallow=True)
    assert "swallowed" in out
    assert code == 130
    assert 1.0 <= seconds < 30


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_an_interrupt_raises_keyboardinterrupt_at_once(tmp_path):
    code, out, seconds = _interrupt(tmp_path, grace=120.0, swallow=False)
    assert "KeyboardInterrupt" in out
    assert code != 0 and seconds < 30  # ended by the exception, long before the timer
