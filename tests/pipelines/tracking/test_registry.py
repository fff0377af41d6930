"""The registry: versions registered, promoted by the champion alias, refused, promoted by
hand and rolled back, each decision in version tags and descriptions."""

from __future__ import annotations

import pytest

from tests.pipelines.tracking.conftest import MODEL

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_promotion_by_alias_refusal_manual_promote_and_rollback(trained, client, tmp_path):
    from pipelines import tracking
    from pipelines.flows import promote
    from pipelines.promotion import manual_promote, rollback
    from pipelines.store import PriceStore

    settings, result = trained
    assert tracking.champion(MODEL, "champion").version == "1"
    v1 = tracking.get_version(MODEL, "1")
    assert v1.tags[tracking.TAG_PROMOTED] == "true"
    assert "first model" in v1.tags[tracking.TAG_REASON]
    # What the registered model forecasts, and why v1 is champion, as a fresh client sees them.
    about = client.get_registered_model(MODEL).description
    days = f"up to {settings.evaluation.forecast_days} trading days ahead, one day at a time"
    for part in ("TEST", "daily open price", days, "last 5 days", "log_return"):
        assert part in about, (part, about)
    text = client.get_model_version(MODEL, "1").description
    run = client.get_run(result.run_id).data.metrics
    assert text.startswith(f"Promoted to champion: test_rmse {run['test_rmse']:.6g} with no ")
    assert "with no champion to compare" in text and f"RMSE {run['naive_rmse']:.6g}" in text
    # No champion to compare: no champion score at all, not the string 'None'.
    first = client.get_model_version(MODEL, "1").tags
    assert "None" not in first.values() and "promotion.champion_score" not in first, first

    frame = PriceStore(settings.store_path).load("TEST")
    dates = frame["date"].iloc[-10:].to_numpy()
    source = client.get_model_version(MODEL, "1").source

    def challenger(rmse: float) -> str:
        mv = tracking.register(MODEL, source, result.run_id, {"ticker": "TEST"})
        metrics = {"test_rmse": rmse, "naive_rmse": 1e9}
        promote.fn(settings, "TEST", mv.version, metrics, frame, dates, 50, tmp_path)
        return mv.version

    better = challenger(1e-9)
    assert tracking.champion(MODEL, "champion").version == better == "2"
    tags = tracking.get_version(MODEL, "2").tags
    assert tags[tracking.TAG_PROMOTED] == "true" and "beats champion" in tags[tracking.TAG_REASON]
    assert tracking.get_version(MODEL, "1").tags[tracking.TAG_REPLACED_BY] == "2"
    # The UI's Description column: the decision in one sentence with the scores it compared.
    v1_score = float(tracking.get_version(MODEL, "2").tags["promotion.champion_score"])
    text = client.get_model_version(MODEL, "2").description
    assert text.startswith("Promoted to champion: test_rmse 1e-09 against champion v1's ")
    assert f"{v1_score:.6g} re-scored on the same test window" in text
    assert "naive forecast RMSE 1e+09" in text and text.count(". ") == 0

    worse = challenger(1e6)
    assert tracking.champion(MODEL, "champion").version == "2"
    tags = tracking.get_version(MODEL, worse).tags
    assert tags[tracking.TAG_PROMOTED] == "false"
    assert "does not beat" in tags[tracking.TAG_REASON]
    text = client.get_model_version(MODEL, worse).description
    assert text.startswith("Not promoted: test_rmse 1e+06 against champion v2's ")
    assert "does not beat" in text

    from pipelines.errors import PipelineError

    with pytest.raises(PipelineError) as err:
        manual_promote(settings, "TEST", "99", "test")  # the known versions, listed plainly
    assert str(err.value).startswith(f"{MODEL} has no version 99 (versions: 1, 2, ")
    assert str(err.value).endswith(f", {worse})")
    manual_promote(settings, "TEST", worse, "test")
    assert tracking.champion(MODEL, "champion").version == worse
    assert "manual" in tracking.get_version(MODEL, worse).tags[tracking.TAG_REASON]
    tags = tracking.get_version(MODEL, worse).tags
    again, moved = manual_promote(settings, "TEST", worse, None)  # already: nothing changes
    assert not moved
    assert again.endswith(f"version {worse} is already champion (nothing changed)")
    assert tracking.get_version(MODEL, worse).tags == tags
    text = client.get_model_version(MODEL, worse).description
    assert text.startswith("Champion by hand (manual promotion: test): its test_rmse ")
    rollback(settings, "TEST")
    assert tracking.champion(MODEL, "champion").version == "2"
    text = client.get_model_version(MODEL, "2").description
    assert "(rollback from v3)" in text
    # The gate's verdict on v2 is kept beside the rollback, not overwritten by it.
    tags = tracking.get_version(MODEL, "2").tags
    assert tags["promotion.gate_reason"].startswith("promoted: test_rmse 1e-09 beats champion")
    assert text.endswith(f"The promotion gate had decided: {tags['promotion.gate_reason']}.")
    # status reports the latest decision (the rollback), not the newest version's (v3's).
    from pipelines.monitoring import status

    assert status(settings)[0]["last_decision"] == "v2 promoted: rollback from v3"
    replaced = ("champion.replaced_by", "champion.replaced_reason")

    def reign_tags(version: str) -> dict[str, str]:
        tags = client.get_model_version(MODEL, version).tags
        return {k: tags[k] for k in replaced if k in tags}

    # v2 holds the alias again: v3's promotion by hand had tagged it replaced; no longer.
    assert reign_tags("2") == {}
    assert reign_tags(worse) == {replaced[0]: "2", replaced[1]: "rollback from v3"}
    rollback(settings, "TEST")
    assert tracking.champion(MODEL, "champion").version == "1"
    assert reign_tags("1") == {}  # replaced by v2 in its first reign: not said by the holder
    assert reign_tags("2") == {replaced[0]: "1", replaced[1]: "rollback from v2"}
    assert client.get_model_version(MODEL, "2").tags["champion.replaced"] == "1"  # its history
    for v in ("1", "2", worse):
        assert "None" not in client.get_model_version(MODEL, v).tags.values(), v

    # A version whose run is still RUNNING (another process, another project on the server)
    # is left to that run's own decision; once the run has ended, the next decision settles it.
    live = client.create_run(client.get_run(result.run_id).info.experiment_id).info.run_id
    busy = tracking.register(MODEL, source, live, {"ticker": "TEST"})
    challenger(1e6)
    assert tracking.get_version(MODEL, busy.version).tags[tracking.TAG_PENDING] == "true"
    client.set_terminated(live, "FAILED")
    # A version whose run died between registering and deciding is settled by the next decision.
    orphan = tracking.register(MODEL, source, result.run_id, {"ticker": "TEST"})
    assert tracking.get_version(MODEL, orphan.version).tags[tracking.TAG_PENDING] == "true"
    challenger(1e6)
    tags = tracking.get_version(MODEL, orphan.version).tags
    assert tags[tracking.TAG_PENDING] == "false" and tags[tracking.TAG_PROMOTED] == "false"
    assert "stopped before" in tags[tracking.TAG_REASON]
    assert tracking.get_version(MODEL, busy.version).tags[tracking.TAG_PENDING] == "false"
