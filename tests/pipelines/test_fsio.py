"""The one lock helper: exclusive across processes, freed by a holder's death, says when it waits."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

from pipelines.fsio import file_lock

HOLD = """
import sys, time
from pipelines.fsio import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _taken_within(path, seconds: float) -> bool:
    """Can this process take the lock within `seconds`? (The thread stays blocked if not.)"""
    done = threading.Event()

    def take() -> None:
        with file_lock(path):
            done.set()

    threading.Thread(target=take, daemon=True).start()
    return done.wait(seconds)


def test_a_holder_killed_by_sigkill_leaves_the_lock_free(tmp_path):
    """A retraining killed outright (OOM killer, `kill -9`) must not block the next one:
    the lock is the kernel's and goes with the process."""
    lock = tmp_path / "locks" / "retrain-x.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "held\n"
        assert not _taken_within(lock, 0.5)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert _taken_within(lock, 10)


def test_a_waiter_says_so_once_and_only_when_it_waits(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipelines")
    lock = tmp_path / "a.lock"
    with file_lock(lock, waiting="waiting for the other one"):
        pass
    assert "waiting for the other one" not in caplog.text  # free: nothing to say
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with file_lock(lock):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    threading.Timer(0.5, release.set).start()
    with file_lock(lock, waiting="waiting for the other one"):
        assert release.is_set()  # taken only once the holder let go
    holder.join(30)
    assert caplog.text.count("waiting for the other one") == 1
