"""Promotion, the whole registry policy: decide, apply, settle and roll back.

:func:`decide` is a pure decision on numbers (tested exhaustively). :func:`promote` applies it
to a newly registered version under a per-model lock; :func:`manual_promote` and
:func:`rollback` move the alias by hand. What a killed process left is settled here too: a
version it registered but never decided on (:func:`settle_interrupted`), and the runs it left
RUNNING (:func:`settle_orphaned_runs`). Every change records the decision on the version (tags
for machines, a one-sentence description for the MLflow UI) and describes on the registered
model what it forecasts. The MLflow calls themselves are in :mod:`pipelines.tracking`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import pyarrow as pa

from pipelines import provenance, tracking
from pipelines.config import PromotionPolicy, Settings
from pipelines.errors import PipelineError
from pipelines.fsio import file_lock
from pipelines.run_owner import owner_gone, settled_note
from pipelines.store import PriceStore, UnknownTickerError

log = logging.getLogger("pipelines")

TAG_GATE_REASON = "promotion.gate_reason"  # the gate's verdict, kept when a hand overrules it
_VERDICTS = ("promoted: ", "refused: ")  # how the gate's reasons start
_RUN_NAME = "mlflow.runName"
TIE = 1e-5  # relative: a challenger must win by more than this (or min_improvement, if larger)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None
    # For the version's description: what was compared, and with whom.
    metric: str = "test_rmse"
    naive_rmse: float | None = None
    champion_version: str | None = None
    by_hand: bool = False  # a manual promotion or a rollback


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def decide(
    policy: PromotionPolicy,
    challenger_score: float,
    challenger_rmse: float,
    naive_rmse: float,
    champion_score: float | None,
    champion_problem: str | None = None,
    by_hand: str = "",
    no_bar: str | None = None,
) -> Decision:
    """Should the challenger take the champion alias?

    All scores are errors (lower is better) measured on the challenger's test window;
    `champion_score` is the champion re-scored on that same window (None: no champion).
    A champion whose score is unknown (not finite; `champion_problem` says why) keeps the
    alias: nothing shows that the challenger is better; `by_hand` is the command that would
    promote the challenger anyway. `no_bar`: why the champion sets no bar (it cannot forecast
    here), so the challenger needs only pass the guards, as with no champion.
    """
    metric = policy.metric

    def verdict(promote: bool, reason: str) -> Decision:
        return Decision(promote, reason, challenger_score, champion_score, metric, naive_rmse)

    if not all(_finite(x) for x in (challenger_score, challenger_rmse, naive_rmse)):
        return verdict(
            False,
            f"refused: non-finite metric ({metric}={challenger_score}, "
            f"test_rmse={challenger_rmse}, naive_rmse={naive_rmse})",
        )
    limit = naive_rmse * (1.0 + policy.max_worse_than_naive)
    if challenger_rmse > limit:
        return verdict(
            False,
            f"refused: test_rmse {challenger_rmse:.6g} is worse than the naive forecast's "
            f"{naive_rmse:.6g} by more than {policy.max_worse_than_naive:.0%} (limit {limit:.6g})",
        )
    if champion_score is None:
        return verdict(
            True,
            f"promoted: {no_bar or 'first model to pass the guards'} "
            f"({metric}={challenger_score:.6g}, naive_rmse={naive_rmse:.6g})",
        )
    if not _finite(champion_score):
        why = champion_problem or f"the champion's {metric} on the same window is {champion_score}"
        hand = f"; to promote this version anyway: {by_hand}" if by_hand else ""
        return verdict(False, f"refused: {why}, so it keeps the alias{hand}")
    # Within TIE of each other two scores are equal: the champion is re-scored through Keras, the
    # challenger through the engine, and float32 alone moves an identical model's score by ~1e-9.
    threshold = champion_score * (1.0 - max(policy.min_improvement, TIE))
    if challenger_score < threshold:
        return verdict(
            True,
            f"promoted: {metric} {challenger_score:.6g} beats champion's {champion_score:.6g} "
            "on the same test window",
        )
    return verdict(
        False,
        f"refused: {metric} {challenger_score:.6g} does not beat champion's "
        f"{champion_score:.6g} on the same test window"
        + (f" by {policy.min_improvement:.1%}" if policy.min_improvement > TIE else ""),
    )


# ---------------------------------------------------------------- descriptions


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.6g}"


def bare_reason(reason: str) -> str:
    """A recorded reason without its verdict ("promoted: x" -> "x"), for a sentence that says
    the verdict itself."""
    return reason.removeprefix(_VERDICTS[0]).removeprefix(_VERDICTS[1])


def version_description(decision: Decision) -> str:
    """The decision in one sentence with the scores it compared (the UI's Description)."""
    why = bare_reason(decision.reason)
    why = why.split(f" ({decision.metric}=")[0]  # its numbers are in the sentence already
    if decision.by_hand:
        return (
            f"Champion by hand ({why}): its {decision.metric} {_fmt(decision.challenger_score)} "
            f"and the naive forecast's RMSE {_fmt(decision.naive_rmse)} on its own test window."
        )
    verdict = "Promoted to champion" if decision.promote else "Not promoted"
    if decision.champion_version is None:
        against = " with no champion to compare"
    elif decision.champion_score is None:  # one it may not challenge: see `_not_challenged`
        against = f", not compared with champion v{decision.champion_version}"
    else:
        against = (
            f" against champion v{decision.champion_version}'s "
            f"{_fmt(decision.champion_score)} re-scored on the same test window"
        )
    return (
        f"{verdict}: {decision.metric} {_fmt(decision.challenger_score)}{against}, "
        f"naive forecast RMSE {_fmt(decision.naive_rmse)}: {why}."
    )


def model_description(ticker: str, params: Mapping[str, str]) -> str:
    """What the registered model forecasts, from the champion's run parameters."""
    return (
        f"Forecasts {ticker}'s daily {params.get('features.target', '?')} price up to "
        f"{params.get('evaluation.forecast_days', '?')} trading days ahead, one day at a time, "
        f"from the last {params.get('features.lookback', '?')} days of "
        f"{params.get('features.columns', '?')} (target transform: "
        f"{params.get('features.target_transform', '?')}, scaler: "
        f"{params.get('features.scaler', '?')}). LSTM, trained by the lstm-pipeline; the "
        "alias marks the version in use, each version's description says why."
    )


# ---------------------------------------------------------------- applying decisions


def _record(name: str, version: str, decision: Decision) -> None:
    tags: dict[str, object] = {
        tracking.TAG_PROMOTED: str(decision.promote).lower(),
        tracking.TAG_PENDING: "false",
        tracking.TAG_REASON: decision.reason,
        "promotion.challenger_score": decision.challenger_score,
        "promotion.champion_score": decision.champion_score,  # None (no champion): removed
        "promotion.decided_at": _now(),
    }
    description = version_description(decision)
    if decision.by_hand:  # a decision by hand keeps the gate's verdict beside it, not over it
        earlier = tracking.get_version(name, version).tags
        gate = _gate_verdict(earlier)
        if gate is not None and TAG_GATE_REASON not in earlier:
            tags[TAG_GATE_REASON] = gate
        if gate is not None:
            description += f" The promotion gate had decided: {gate}."
    tracking.tag_version(name, version, tags)
    tracking.set_version_description(name, version, description)


def _gate_verdict(tags: Mapping[str, str]) -> str | None:
    """The promotion gate's verdict on a version: kept aside once a hand decided on it."""
    gate = tags.get(TAG_GATE_REASON)
    if gate is None and tags.get(tracking.TAG_REASON, "").startswith(_VERDICTS):
        gate = tags[tracking.TAG_REASON]
    return gate


def _now() -> str:
    # microseconds: status orders decisions by this, and a rollback may follow within a second
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def last_decision(versions: Sequence[tracking.RegisteredVersion]) -> str | None:
    """The most recent decision on any of ``versions``, in one line ("v2 promoted: ...")."""
    decided = [v for v in versions if v.tags.get(tracking.TAG_REASON)]
    if not decided:
        return None
    v = max(decided, key=lambda v: (v.tags.get("promotion.decided_at", ""), int(v.version)))
    verdict = "promoted" if v.tags.get(tracking.TAG_PROMOTED) == "true" else "refused"
    return f"v{v.version} {verdict}: {without_repeats(bare_reason(v.tags[tracking.TAG_REASON]))}"


def without_repeats(reason: str) -> str:
    """``reason`` without a part that repeats the one before it: an older version recorded
    `promote`'s default reason after "manual promotion: " ("manual promotion: manual
    promotion"), as `--reason "manual promotion"` would."""
    parts: list[str] = []
    for part in reason.split(": "):
        if not parts or part != parts[-1]:
            parts.append(part)
    return ": ".join(parts)


def _set_champion(
    name: str, alias: str, ticker: str, version: str, reason: str, remember: bool = True
) -> str | None:
    """Point the alias at ``version``; tag the replaced champion. Returns its version.

    ``remember=False`` (a rollback) keeps the new champion's own record of whom it replaced,
    so successive rollbacks walk back through the history.
    """
    previous = tracking.champion(name, alias)
    tracking.set_alias(name, alias, version)
    # None removes: the alias holder was replaced by no one, whatever an earlier reign's end left
    stale = dict.fromkeys((tracking.TAG_REPLACED_BY, tracking.TAG_REPLACED_REASON))
    tracking.tag_version(name, version, {"champion.since": _now(), **stale})
    _describe_model(name, ticker, version)
    if previous is None or previous.version == version:
        return None
    tracking.tag_version(
        name,
        previous.version,
        {tracking.TAG_REPLACED_BY: version, tracking.TAG_REPLACED_REASON: reason},
    )
    if remember:
        tracking.tag_version(name, version, {tracking.TAG_REPLACED: previous.version})
    return previous.version


def _describe_model(name: str, ticker: str, version: str) -> None:
    run_id = tracking.get_version(name, version).run_id
    params = tracking.run_params(run_id) if run_id else {}
    tracking.set_model_description(name, model_description(ticker, params))


# ---------------------------------------------------------------- what a killed process left


def settle_interrupted(name: str, version: str) -> list[str]:
    """Record a refusal on versions whose run died between registering and deciding. A run
    still RUNNING is left alone: another process (or another project on the same server) is
    about to decide on its version; one killed on this host was marked FAILED first
    (:func:`settle_orphaned_runs`)."""
    settled = []
    for v in tracking.versions(name):
        pending = v.tags.get(tracking.TAG_PENDING) == "true"
        if v.version != version and pending and not tracking.run_running(v.run_id):
            why = "refused: its run stopped before a promotion decision was recorded"
            _record(name, v.version, Decision(False, why, float("nan"), None))
            settled.append(v.version)
    return settled


def settle_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the experiment's runs left RUNNING by a process of this host that has
    ended (killed: it could not end them), with a tag saying why, and the models they were
    logging; returns their ids.

    Runs whose process lives, runs of other hosts and runs without owner tags stay as they are.
    """
    settled = []
    for run_id, tags in tracking.running_runs(experiment_id).items():
        reason = owner_gone(tags)
        if reason is None:
            continue
        tracking.fail_orphan(experiment_id, run_id, settled_note(reason))
        log.info("run %s (%s) marked FAILED: %s", tags.get(_RUN_NAME, "?"), run_id, reason)
        settled.append(run_id)
    return settled


def _stored(settings: Settings, ticker: str) -> Callable[[], pa.Table | None]:
    """The ticker's stored rows, read only when asked: provenance judges an untagged
    version by them. None when none are stored here (a hand may promote in a project that
    only serves): nothing to judge by, as in `status`."""

    def read() -> pa.Table | None:
        try:
            return PriceStore(settings.store_path).read_table(ticker)
        except UnknownTickerError:
            return None

    return read


def _not_challenged(
    settings: Settings,
    ticker: str,
    champion: tracking.RegisteredVersion,
    version: str,
    metrics: Mapping[str, float],
) -> Decision | None:
    """A refusal when `champion` is another project's (provenance's FOREIGN, CALENDAR): the
    champion of the same model name that project serves, whose alias a challenger trained here
    does not take. This project's own champion: None, it is challenged on scores."""

    mismatch = provenance.not_trained_here(
        settings, ticker, champion, _stored(settings, ticker), challenger=version
    )
    if mismatch is None:
        return None
    return _refused(settings, ticker, mismatch[1], metrics, champion.version)


def _refused(
    settings: Settings,
    ticker: str,
    why: str,
    metrics: Mapping[str, float],
    champion_version: str | None = None,
) -> Decision:
    """A refusal for whose model it is, not on scores: said on stderr too."""
    log.warning("%s: %s", ticker, why)
    metric = settings.registry.promotion.metric
    return Decision(
        False,
        f"refused: {why}",
        metrics.get(metric, float("nan")),
        None,
        metric,
        metrics.get("naive_rmse"),
        champion_version=champion_version,
    )


def promote(
    settings: Settings,
    ticker: str,
    version: str,
    metrics: Mapping[str, float],
    rescore: Callable[[str], float],
) -> Decision:
    """Decide on a newly registered version and apply the decision.

    ``rescore(champion_version)`` returns the champion's error on this version's test window.
    One decision at a time per registered model (a file lock), so racing runs cannot both win.
    Another project's champion (see provenance.whose) is not challenged at all, nor, when the
    model has no champion, is the alias taken while another project has versions of it.
    """
    reg = settings.registry
    name = reg.name_for(ticker)
    policy = reg.promotion
    with file_lock(settings.path(".locks") / f"promote-{name}.lock"):
        settle_interrupted(name, version)
        current = tracking.champion(name, reg.alias)
        refused = None
        if current is not None and current.version != version:
            refused = _not_challenged(settings, ticker, current, version, metrics)
        elif current is None:  # no champion: the name is free unless another project uses it
            taken = provenance.name_taken(settings, ticker, tracking.versions(name), version)
            refused = _refused(settings, ticker, taken, metrics) if taken else None
        if refused is not None:
            _record(name, version, refused)  # the model's description is its owner's
            return refused
        champion_score = problem = no_bar = None
        challenged = current is not None and current.version != version
        if challenged and provenance.whose(settings, current) == "this":
            # this project's champion trained with another data.calendar cannot forecast
            # here (provenance's CALENDAR): its score is no bar for one trained with ours
            theirs = provenance.other_calendar(settings, current)
            if theirs is not None:
                no_bar = (
                    f"passes the guards, and champion v{current.version} was trained with "
                    f"data.calendar {theirs}, not this project's {settings.data.calendar or 'null'}"
                    ", so it cannot forecast here and is not compared"
                )
        if challenged and no_bar is None:
            try:
                champion_score = rescore(current.version)
            except Exception as exc:  # unknown, so refused below: a hand can still promote
                error = " ".join(f"{type(exc).__name__}: {exc}".split())
                problem = f"champion v{current.version} could not be re-scored ({error})"
                champion_score = float("nan")
        decision = decide(
            policy,
            metrics.get(policy.metric, float("nan")),
            metrics.get("test_rmse", float("nan")),
            metrics.get("naive_rmse", float("nan")),
            champion_score,
            problem,
            f"lstm-pipeline promote --ticker {ticker} --version {version}",
            no_bar,
        )
        if champion_score is not None or no_bar is not None:
            decision = replace(decision, champion_version=current.version)
        _record(name, version, decision)
        if decision.promote:
            _set_champion(name, reg.alias, ticker, version, decision.reason)
        elif current is None:  # no champion yet: still say what the model is for
            _describe_model(name, ticker, version)
    return decision


# ---------------------------------------------------------------- by hand


def _registered(settings: Settings, ticker: str) -> str:
    tracking.connect(settings)
    name = settings.registry.name_for(ticker)
    if not tracking.registered_model_exists(name):
        from pipelines.store import PriceStore

        hint = PriceStore(settings.store_path).other_case(ticker)
        raise PipelineError(
            f"no registered model {name!r} (ticker {ticker!r})" + (f": {hint}" if hint else "")
        )
    return name


def _own_scores(name: str, version: str, why: str) -> Decision:
    """A decision taken by hand, described with the version's own test-window scores."""
    run_id = tracking.get_version(name, version).run_id
    m = tracking.run_metrics(run_id) if run_id else {}
    score = m.get("test_rmse", float("nan"))
    return Decision(True, why, score, None, "test_rmse", m.get("naive_rmse"), by_hand=True)


def _numbers(name: str) -> list[str]:
    """The model's existing version numbers, in order (an error names them)."""
    return [v.version for v in tracking.versions(name)]


def _check_by_hand(
    settings: Settings,
    ticker: str,
    current: tracking.RegisteredVersion | None,
    target: tracking.RegisteredVersion,
) -> None:
    """A hand moves the alias only off this project's champion (another project serves its
    own), and only onto a version `forecast` takes (the reason `status` gives otherwise)."""
    if current is not None:
        theirs = provenance.others_champion(settings, ticker, current)
        if theirs is not None:
            raise PipelineError(theirs)
    mismatch = provenance.not_trained_here(settings, ticker, target, _stored(settings, ticker))
    if mismatch is not None:
        raise PipelineError(mismatch[1])


def manual_promote(
    settings: Settings, ticker: str, version: str, reason: str | None
) -> tuple[str, bool]:
    """Make `version` the champion by hand: what to tell the user, and whether the alias moved."""
    name = _registered(settings, ticker)
    known = _numbers(name)
    if str(version) not in known:
        raise PipelineError(f"{name} has no version {version} (versions: {', '.join(known)})")
    alias = settings.registry.alias
    why = without_repeats(f"manual promotion: {reason}" if reason else "manual promotion")
    with file_lock(settings.path(".locks") / f"promote-{name}.lock"):
        current = tracking.champion(name, alias)
        if current is not None and current.version == str(version):
            return f"{name}: version {version} is already {alias} (nothing changed)", False
        target = tracking.get_version(name, str(version))
        _check_by_hand(settings, ticker, current, target)
        gate = _gate_verdict(target.tags)
        _record(name, str(version), _own_scores(name, str(version), why))
        previous = _set_champion(name, alias, ticker, str(version), why)
    done = f"{name}: version {version} is now {alias} (was {previous or 'none'})"
    if gate is not None and gate.startswith(_VERDICTS[1]):  # a hand overruled the gate
        done += f"\n(the promotion gate had refused it: {bare_reason(gate)})"
    return done, True


def rollback(settings: Settings, ticker: str) -> str:
    """Give the alias back to the version the current champion replaced."""
    name = _registered(settings, ticker)
    alias = settings.registry.alias
    with file_lock(settings.path(".locks") / f"promote-{name}.lock"):
        current = tracking.champion(name, alias)
        if current is None:
            raise PipelineError(f"{name} has no {alias!r} to roll back")
        previous = current.tags.get(tracking.TAG_REPLACED)
        if not previous:
            raise PipelineError(f"{name} v{current.version} did not replace an earlier champion")
        known = _numbers(name)
        if previous not in known:  # deleted since, e.g. in the MLflow UI
            raise PipelineError(
                f"{name} v{current.version} replaced v{previous}, which no longer exists "
                f"(deleted?): promote another version with lstm-pipeline promote --ticker "
                f"{ticker} --version N (versions: {', '.join(known)})"
            )
        _check_by_hand(settings, ticker, current, tracking.get_version(name, previous))
        why = f"rollback from v{current.version}"
        _record(name, previous, _own_scores(name, previous, why))
        _set_champion(name, alias, ticker, previous, why, remember=False)
    return f"{name}: rolled back {alias} from v{current.version} to v{previous}"
