"""A run's owner process: alive, ended, or its pid reused by another process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.run_owner import TAG_HOST, TAG_PID, TAG_START, owner_gone, owner_tags

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def ended_process_tags() -> dict[str, str]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        return owner_tags(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_live_owner_is_alive():
    tags = owner_tags()
    assert set(tags) == {TAG_HOST, TAG_PID, TAG_START}
    assert owner_gone(tags) is None


def test_an_ended_owner_is_gone():
    assert "has ended" in owner_gone(ended_process_tags())


def test_a_reused_pid_is_not_taken_for_the_owner():
    # this process's pid, but another start time: the recorded owner was an earlier process
    boot, namespace, start = owner_tags()[TAG_START].split()
    tags = {**owner_tags(), TAG_START: f"{boot} {namespace} {int(start) - 1}"}
    assert "its pid now belongs to another process" in owner_gone(tags)


def test_a_restarted_machine_has_no_owner_left():
    _, namespace, start = owner_tags()[TAG_START].split()
    tags = {**owner_tags(), TAG_START: f"another-boot {namespace} {start}"}
    assert "restarted" in owner_gone(tags)


@pytest.mark.parametrize(
    "change",
    [
        {TAG_HOST: "another-host"},  # its processes cannot be seen from here
        {TAG_START: "{boot} pid:[1] {start}"},  # another pid namespace (a container)
        {TAG_HOST: None, TAG_PID: None, TAG_START: None},  # a run made before owner tags
    ],
)
def test_runs_it_cannot_judge_are_left_alone(change):
    tags = ended_process_tags()
    boot, _, start = tags[TAG_START].split()
    for key, value in change.items():
        if value is None:
            tags.pop(key)
        else:
            tags[key] = value.format(boot=boot, start=start)
    assert owner_gone(tags) is None
