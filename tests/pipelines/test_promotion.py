from __future__ import annotations

import math

import pytest
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


def test_a_champion_that_sets_no_bar_is_replaced_by_one_passing_the_guards():
    """This project's champion trained with another data.calendar cannot forecast here: the
    challenger needs only pass the guards (a user's retrained version tied with it and was
    refused, leaving the project without a usable champion)."""
    why = "passes the guards, and champion v1 was trained with data.calendar XNYS"
    d = decide(POLICY, 1.0, 1.0, 1.0, None, no_bar=why)
    assert d.promote and d.reason == f"promoted: {why} (test_rmse=1, naive_rmse=1)"
    assert not decide(POLICY, 1.2, 1.2, 1.0, None, no_bar=why).promote  # the guards hold


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


def _second_project(trained_settings, folder, seed: int):
    """A project on `trained_settings`' tracking store with TEST prices of its own stored
    (`seed` 0: the very prices the first project's champion v1 was trained on)."""
    from pipelines.config import load_settings
    from pipelines.tasks import ingest_file
    from tests.pipelines.cli.conftest import project_beside
    from tests.pipelines.conftest import price_frame, write_prices

    other = load_settings(project_beside(trained_settings.base_dir, folder), env={})
    prices = write_prices(folder / "prices" / "TEST.csv", price_frame(120, seed=seed))
    ingest_file(other, str(prices), "TEST")
    return other


def _challenge(settings, champion_score: float):
    """`settings`' project registers v2 (v1's model again) and decides on it, v2 scoring 0.1
    and v1 re-scored to `champion_score`: the decision and the versions it re-scored."""
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.promotion import promote

    tracking.connect(settings)
    v1 = MlflowClient().get_model_version("test-TEST", "1")
    v2 = tracking.register("test-TEST", v1.source, v1.run_id, {}).version
    rescored: list[str] = []

    def rescore(version: str) -> float:
        rescored.append(version)
        return champion_score

    d = promote(settings, "TEST", v2, {"test_rmse": 0.1, "naive_rmse": 1.0}, rescore)
    return d, rescored


def _registry(settings) -> tuple[dict, dict]:
    """The model's aliases and its versions' tags and descriptions, as a fresh client reads
    them."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{settings.base_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    aliases = client.get_registered_model("test-TEST").aliases
    versions = client.search_model_versions("name = 'test-TEST'")
    return {a: str(v) for a, v in aliases.items()}, {
        str(v.version): (v.tags, v.description) for v in versions
    }


@pytest.mark.parametrize("seed", [0, 7], ids=["same prices", "other prices"])
def test_another_projects_champion_is_not_challenged(trained_settings, tmp_path, seed):
    """Two projects on one tracking store, the same ticker: a version the second registers
    does not take the first's champion alias however well it scores, nor is it compared; the
    champion is left as it was. By the champion's lstm.project tag: with the very prices it
    was trained on (which provenance cannot tell apart) too. The CLI's test: test_commands."""

    aliases, versions = _registry(trained_settings)
    theirs = (trained_settings.base_dir / ".lstm-project").read_text().strip()
    assert versions["1"][0]["lstm.project"] == theirs
    other = _second_project(trained_settings, tmp_path / "other", seed)
    d, rescored = _challenge(other, champion_score=1.0)  # far worse: it would win
    assert rescored == []
    assert not d.promote and d.reason == (
        f"refused: test-TEST v1 is another project's model: its lstm.project tag is {theirs}, "
        f"this project's id is not made yet ({tmp_path / 'other' / '.lstm-project'}), so "
        "test-TEST v2, trained here, does not challenge it and is not promoted: give this "
        'project model names of its own with registry.model_name (e.g. "myproject-{ticker}") '
        "and train them: lstm-pipeline run --ticker TEST"
    )
    after_aliases, after = _registry(trained_settings)
    assert after_aliases == aliases == {"champion": "1"}
    assert after["1"] == versions["1"]
    assert after["2"][0]["promotion.promoted"] == "false"
    assert version_description(d) == (
        f"Not promoted: test_rmse 0.1, not compared with champion v1, naive forecast RMSE 1: "
        f"{d.reason.removeprefix('refused: ')}."
    )


def _untag_project(settings) -> None:
    """v1 as a version registered before projects had ids: no lstm.project tag."""
    from pipelines import tracking

    tracking.connect(settings)
    tracking.tag_version("test-TEST", "1", {tracking.TAG_PROJECT: None})


def test_an_untagged_champion_is_judged_by_what_it_was_trained_on(trained_settings, tmp_path):
    """A champion registered before projects had ids: another project's stored prices differ
    from those it was trained on, so it is not challenged (provenance's FOREIGN line)."""
    _untag_project(trained_settings)
    aliases, versions = _registry(trained_settings)
    other = _second_project(trained_settings, tmp_path / "other", seed=7)
    d, rescored = _challenge(other, champion_score=1.0)
    assert rescored == []
    assert not d.promote and d.reason.startswith(
        "refused: test-TEST v1 was trained on 120 rows through 2020-06-16, not on the 120 rows "
        "of TEST stored here through that day: it is not this project's model"
    ), d.reason
    assert d.reason.endswith("promote v2 by hand: lstm-pipeline promote --ticker TEST --version 2")
    assert _registry(trained_settings)[0] == aliases == {"champion": "1"}
    assert _registry(trained_settings)[1]["1"] == versions["1"]


@pytest.mark.parametrize("tagged", [True, False], ids=["tagged", "untagged"])
def test_this_projects_own_champion_is_challenged_on_scores(trained_settings, tagged):
    """The project's own champion, its stored days since corrected (`ingest --replace`): its
    new version is compared with it and wins on scores. Before, the champion looked like
    another project's (other prices) and was not challenged; untagged it still does."""
    from pipelines.tasks import ingest_file
    from tests.pipelines.conftest import price_frame, write_prices

    if not tagged:
        _untag_project(trained_settings)
    last = price_frame(120).iloc[[-1]].copy()
    last["Open"] = round(float(last["Open"].iloc[0]) + 0.01, 4)
    fix = write_prices(trained_settings.base_dir / "fix" / "TEST.csv", last)
    assert ingest_file(trained_settings, str(fix), "TEST", replace=True)[0].replaced == 1
    d, rescored = _challenge(trained_settings, champion_score=1.0)
    if tagged:
        assert rescored == ["1"]
        assert d.promote and d.reason == (
            "promoted: test_rmse 0.1 beats champion's 1 on the same test window"
        )
        assert _registry(trained_settings)[0] == {"champion": "2"}
    else:
        assert rescored == [] and not d.promote
        assert "was trained on 120 rows through 2020-06-16" in d.reason
        assert _registry(trained_settings)[0] == {"champion": "1"}


def _no_store_reads(monkeypatch) -> list[str]:
    """Make reading a ticker's stored rows fail (and note it): a decision that needs none
    must not read them."""
    from pipelines.store import PriceStore

    reads: list[str] = []

    def refuse(self, ticker):
        reads.append(ticker)
        raise AssertionError(f"read {ticker}'s stored rows")

    monkeypatch.setattr(PriceStore, "read_table", refuse)
    return reads


@pytest.mark.parametrize("whose", ["this", "other"])
def test_a_tagged_champion_is_judged_without_reading_the_stored_rows(
    trained_settings, tmp_path, monkeypatch, whose
):
    """Its lstm.project tag says whose it is: the ticker's stored table (every row, read at
    each promotion before) is read only for a champion without the tag."""
    settings = trained_settings
    if whose == "other":
        settings = _second_project(trained_settings, tmp_path / "other", seed=7)
    reads = _no_store_reads(monkeypatch)
    d, rescored = _challenge(settings, champion_score=1.0)
    assert reads == []
    if whose == "this":
        assert rescored == ["1"] and d.promote, d.reason
    else:
        assert rescored == [] and not d.promote and "another project's model" in d.reason


def _drop_champion(settings) -> None:
    """The champion alias deleted by hand (the MLflow UI): the model has none."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{settings.base_dir / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).delete_registered_model_alias(
        "test-TEST", "champion"
    )


def test_a_model_without_champion_takes_this_projects_version(trained_settings):
    """Its versions all this project's (or none): the name is free, the new version that
    passes the guards becomes champion, as the first one did."""
    _drop_champion(trained_settings)
    d, rescored = _challenge(trained_settings, champion_score=1.0)
    assert rescored == [] and d.promote and d.reason.startswith("promoted: first model")
    assert _registry(trained_settings)[0] == {"champion": "2"}


def test_a_model_without_champion_is_not_taken_from_another_project(trained_settings, tmp_path):
    """Two projects on one tracking store, the same ticker: the first's champion alias
    deleted by hand. A version the second registers does not take the alias of a model whose
    versions another project registered (its forecasts would then refuse it): refused, with
    the way out; before, it became champion as a model's first version does."""
    from mlflow import MlflowClient

    theirs = (trained_settings.base_dir / ".lstm-project").read_text().strip()
    _drop_champion(trained_settings)
    aliases, versions = _registry(trained_settings)
    assert aliases == {}
    uri = f"sqlite:///{trained_settings.base_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    described = client.get_registered_model("test-TEST").description
    other = _second_project(trained_settings, tmp_path / "other", seed=7)
    d, rescored = _challenge(other, champion_score=1.0)
    assert rescored == []
    assert not d.promote and d.reason == (
        f"refused: test-TEST has no champion, and v1 is another project's model (its "
        f"lstm.project tag is {theirs}, this project's id is not made yet "
        f"({tmp_path / 'other' / '.lstm-project'})), so test-TEST v2, trained here, does not "
        "take the name: give this project model names of its own with registry.model_name "
        '(e.g. "myproject-{ticker}") and train them: lstm-pipeline run --ticker TEST; or, if '
        "test-TEST is this project's to use, promote v2 by hand: lstm-pipeline promote "
        "--ticker TEST --version 2"
    )
    after_aliases, after = _registry(trained_settings)
    assert after_aliases == {} and after["1"] == versions["1"]
    # what the model forecasts stays as its owner described it
    assert client.get_registered_model("test-TEST").description == described
    assert after["2"][0]["promotion.promoted"] == "false"
    assert after["2"][1] == (
        "Not promoted: test_rmse 0.1 with no champion to compare, naive forecast RMSE 1: "
        f"{d.reason.removeprefix('refused: ')}."
    )


def test_a_hand_promotes_in_a_project_without_the_tickers_prices(trained_settings):
    """A project that only serves (the ticker not stored in it; e.g. a shared tracking
    server's versions registered elsewhere, untagged): nothing to judge an untagged version
    by, so a hand's promotion goes through, as `status` shows no mismatch there."""
    import shutil

    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.promotion import manual_promote

    settings = trained_settings
    _untag_project(settings)
    v1 = MlflowClient().get_model_version("test-TEST", "1")
    v2 = tracking.register("test-TEST", v1.source, v1.run_id, {}).version
    shutil.rmtree(settings.store_path)
    said, moved = manual_promote(settings, "TEST", v2, "race")
    assert moved
    assert said == f"test-TEST: version {v2} is now champion (was 1)"
    assert _registry(settings)[0] == {"champion": v2}
