"""The project's id (whose a registered version is): made once, atomically, only by a
training; what decides whose champion it is is tested with promotion and the CLI."""

from __future__ import annotations

import re
import stat
import threading

import pytest

from pipelines.errors import PipelineError
from pipelines.fsio import file_mode
from pipelines.provenance import id_path, project_id


def test_the_id_is_made_once_and_only_when_asked(tiny_settings):
    folder = tiny_settings.base_dir
    before = sorted(p.name for p in folder.iterdir())
    assert project_id(tiny_settings) is None  # reading makes nothing (status, forecast)
    assert sorted(p.name for p in folder.iterdir()) == before
    made = project_id(tiny_settings, create=True)
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    path = id_path(tiny_settings)
    assert path == folder / ".lstm-project"  # beside mlflow.yaml
    assert path.read_text() == f"{made}\n"
    assert stat.S_IMODE(path.stat().st_mode) == file_mode()  # as atomic_write leaves files
    assert project_id(tiny_settings, create=True) == project_id(tiny_settings) == made
    # no temporary file left beside it
    assert not [p for p in folder.iterdir() if p.name.startswith(".lstm-project.")]


def test_first_trainings_at_once_make_one_id(tiny_settings):
    """Racing first trainings (retrain's workers, two commands) must not tag their versions
    with ids of their own: one is made, under a lock, and every caller gets it."""
    start = threading.Barrier(6)
    got: list[str] = []

    def first_training() -> None:
        start.wait()
        got.append(project_id(tiny_settings, create=True))

    threads = [threading.Thread(target=first_training) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and set(got) == {project_id(tiny_settings)}


@pytest.mark.parametrize("text", ["", "not an id\n", "ABC"])
def test_an_id_file_that_holds_no_id_is_one_line_naming_it(tiny_settings, text):
    path = id_path(tiny_settings)
    path.write_text(text)
    for create in (False, True):
        with pytest.raises(PipelineError) as info:
            project_id(tiny_settings, create=create)
        [line] = str(info.value).splitlines()
        assert line.startswith(f"{path}: {text.strip()!r} is not a project id"), line
    assert path.read_text() == text  # left for the user to put right
