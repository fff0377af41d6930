from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from pipelines.config import PromotionPolicy
from pipelines.promotion import TIE, Decision, decide, version_description

POLICY = PromotionPolicy(metric="test_rmse", min_improvement=0.0, max_worse_than_naive=0.1)
anything = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0]),
)


def test_first_model_passing_the_guards_becomes_champion():
    d = decide(POLICY, 1.0, 1.0, 1.0, None)
    assert d.promote and "first model" in d.reason


def test_better_challenger_wins_worse_is_refused():
    assert decide(POLICY, 0.9, 0.9, 1.0, 0.95).promote
    refused = decide(POLICY, 0.97, 0.97, 1.0, 0.95)
    assert not refused.promote and "does not beat" in refused.reason


def test_a_tie_keeps_the_champion():
    """An identical model re-scored through another inference path differs in the 9th digit."""
    champion, same = 0.6764475591385121, 0.6764475582771339
    tie = decide(POLICY, same, same, 1.0, champion)
    assert not tie.promote and "does not beat" in tie.reason
    assert decide(POLICY, champion * (1 - 2 * TIE), 0.6, 1.0, champion).promote


def test_a_champion_with_an_unknown_score_keeps_the_alias():
    hand = "lstm-pipeline promote --ticker T --version 2"
    d = decide(POLICY, 0.5, 0.5, 1.0, math.nan, "champion v1 could not be re-scored (x)", hand)
    assert not d.promote
    assert d.reason == (
        "refused: champion v1 could not be re-scored (x), so it keeps the alias; "
        f"to promote this version anyway: {hand}"
    )
    assert not decide(POLICY, 0.5, 0.5, 1.0, math.inf).promote


def test_guard_against_the_naive_forecast():
    d = decide(POLICY, 1.2, 1.2, 1.0, None)
    assert not d.promote and "naive" in d.reason


@given(
    challenger=anything,
    naive=anything,
    champion=st.one_of(st.none(), anything),
    margin=st.floats(0, 0.5),
    worse=st.floats(0, 1),
)
def test_promotion_happens_exactly_when_the_policy_says(challenger, naive, champion, margin, worse):
    policy = PromotionPolicy(metric="test_rmse", min_improvement=margin, max_worse_than_naive=worse)
    d = decide(policy, challenger, challenger, naive, champion)
    finite = math.isfinite(challenger) and math.isfinite(naive)
    guards = finite and challenger <= naive * (1 + worse)
    if champion is None:
        expected = guards
    elif not math.isfinite(champion):  # an unknown champion score never hands over the alias
        expected = False
    else:
        expected = guards and challenger < champion * (1 - max(margin, TIE))
    assert d.promote == expected
    assert d.reason.startswith("promoted" if expected else "refused")


def test_version_description_is_one_sentence_with_every_score():
    from dataclasses import replace

    from pipelines.promotion import version_description

    d = replace(decide(POLICY, 0.9, 0.9, 1.25, 0.95), champion_version="3")
    text = version_description(d)
    assert text.startswith("Promoted to champion: test_rmse 0.9 against champion v3's 0.95 ")
    assert "re-scored on the same test window" in text and "naive forecast RMSE 1.25" in text
    assert text.endswith(".") and text.count(". ") == 0
    refused = version_description(decide(POLICY, 1.2, 1.2, 1.0, None))
    assert refused.startswith("Not promoted: test_rmse 1.2 with no champion to compare")
    assert "worse than the naive" in refused
    first = version_description(decide(POLICY, 1.0, 1.0, 1.0, None))
    assert first.endswith("naive forecast RMSE 1: first model to pass the guards.")
    by_hand = Decision(True, "rollback from v4", 1.5, None, "test_rmse", 1.25, by_hand=True)
    assert version_description(by_hand) == (
        "Champion by hand (rollback from v4): its test_rmse 1.5 and the naive forecast's "
        "RMSE 1.25 on its own test window."
    )


def test_runs_left_running_by_an_ended_process_are_failed_and_only_those(tiny_settings):
    """What a SIGKILL leaves: a RUNNING run whose process has ended. The next command's
    settling marks it FAILED with a note; runs of live processes (this one included), of
    another host, of an earlier process that had the same pid, or without owner tags stay."""
    import subprocess
    import sys

    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    from pipelines import tracking
    from pipelines.promotion import settle_orphaned_runs
    from pipelines.run_owner import TAG_HOST, TAG_SETTLED, owner_tags
    from tests.pipelines.test_run_owner import ended_process_tags

    exp = tracking.connect(tiny_settings)
    client = MlflowClient()
    ended = ended_process_tags()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        made = {
            "killed": ended,
            "live": owner_tags(sleeper.pid),
            "other host": {**ended, TAG_HOST: "another-host"},
            "untagged": {},
        }
        runs = {k: client.create_run(exp, run_name=k, tags=t).info.run_id for k, t in made.items()}
        runs["mine"] = tracking.start_run(tiny_settings, exp, "TEST", {})  # owner: this process
        runs["ended, finished"] = client.create_run(exp, tags=ended).info.run_id
        client.set_terminated(runs["ended, finished"], "FINISHED")
        # cut while logging its model (ut4 T1): MLflow's LoggedModel stays PENDING
        cut = client.create_logged_model(exp, source_run_id=runs["killed"]).model_id
        alive = client.create_logged_model(exp, source_run_id=runs["live"]).model_id
        assert settle_orphaned_runs(exp) == [runs["killed"]]
        assert settle_orphaned_runs(exp) == []  # settled once
        status = {k: client.get_run(r).info.status for k, r in runs.items()}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert status == {
        "killed": "FAILED",
        "live": "RUNNING",
        "other host": "RUNNING",
        "untagged": "RUNNING",
        "mine": "RUNNING",
        "ended, finished": "FINISHED",
    }
    assert client.get_logged_model(cut).status == LoggedModelStatus.FAILED
    assert client.get_logged_model(alive).status == LoggedModelStatus.PENDING
    note = client.get_run(runs["killed"]).data.tags[TAG_SETTLED]
    assert f"process {ended['owner.pid']} on" in note and "marked FAILED" in note
    assert settle_orphaned_runs(exp) == [runs["live"]]  # once its process has ended


def test_another_projects_champion_is_not_challenged(trained_settings, tmp_path):
    """Two projects on one tracking store, the same ticker: a version the second registers
    does not take the first's champion alias however well it scores; it is refused with
    the provenance line, and the champion is left as it was (the CLI's test: test_commands)."""
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.config import load_settings
    from pipelines.promotion import promote
    from pipelines.tasks import ingest_file
    from tests.pipelines.cli.conftest import project_beside
    from tests.pipelines.conftest import price_frame, write_prices

    other = load_settings(project_beside(trained_settings.base_dir, tmp_path / "other"), env={})
    prices = write_prices(tmp_path / "other" / "prices" / "TEST.csv", price_frame(120, seed=7))
    ingest_file(other, str(prices), "TEST")
    tracking.connect(other)
    client = MlflowClient()
    v1 = client.get_model_version("test-TEST", "1")
    v2 = tracking.register("test-TEST", v1.source, v1.run_id, {}).version

    rescored: list[str] = []

    def rescore(version: str) -> float:  # far worse than the challenger: it would win
        rescored.append(version)
        return 1.0

    d = promote(other, "TEST", v2, {"test_rmse": 0.1, "naive_rmse": 1.0}, rescore)
    assert str(client.get_model_version_by_alias("test-TEST", "champion").version) == "1"
    assert rescored == []  # not compared at all
    assert not d.promote and d.reason.startswith(
        "refused: test-TEST v1 was trained on 120 rows through 2020-06-16, not on the 120 rows "
        "of TEST stored here through that day: it is not this project's model"
    ), d.reason
    assert d.reason.endswith("promote v2 by hand: lstm-pipeline promote --ticker TEST --version 2")
    after = client.get_model_version("test-TEST", "1")
    assert (after.tags, after.description) == (v1.tags, v1.description)
    assert client.get_model_version("test-TEST", v2).tags["promotion.promoted"] == "false"
    assert version_description(d) == (
        f"Not promoted: test_rmse 0.1, not compared with champion v1, naive forecast RMSE 1: "
        f"{d.reason.removeprefix('refused: ')}."
    )
