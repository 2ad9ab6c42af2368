"""The rollout state of one path group and the anytime-valid decision (pure).

A *rollout* of a path group starts with its first increment that has both
canary and stable requests and lasts until canary traffic has been gone for
``rollout_idle_seconds``. Its ``GroupState`` is everything the verdicts need
from the whole rollout (the window tables keep only the last few windows):
cumulative counts and histograms, the log-likelihood grids of the e-processes
(``pipeline/canary/evidence.py``), a bounded history for the report, and the
sticky rollback. ``fold`` adds one stratum; the worker persists the state in a
changelogged Faust table.

Evidence is folded in *increments*: every evaluation (``GRAYSCOPE_CANARY_INTERVAL``,
10 s by default) folds what each live window gained since the last one -- its
table counts minus those already folded (``GroupState.folded``) -- as a
stratum of its own, so a regression is acted on within an interval, not at
the end of a minute's window. Each increment's 2x2 table is conditioned on
its own margins, so the product over increments is a test supermartingale
like the product over windows. The evaluator folds them (``advance``) and the
worker's agent persists exactly those increments (``apply_fold``, keyed by
``GroupState.folds``): the values looked at are the values of one process.

``assess`` turns the states of all path groups into decisions:

1. The evidence of a group is the mean of its families' e-values: the 5xx
   e-process (``H0: rate ratio <= psi0``) and the latency e-process (the mean
   over the p50/p95/p99 thresholds, ``H0: canary no slower``), the latter
   counted only while the estimated p95 increase is at least the configured
   threshold (a gate can only lower an e-value, so validity stays).
2. The rollout's evidence is the weighted average over groups (weights fixed
   by the traffic of the rollout's first window, a reserve for groups that
   appear later): an e-process under any dependence between groups and
   families. ``rollback`` when it reaches ``1/alpha``; e-BH names the groups.
3. Otherwise per group: ``hold`` during warm-up, on a sample-ratio mismatch
   or a missing window; ``insufficient_data`` below the minimum exposure or
   when the requests a decision still needs would take longer than the
   horizon; ``promote`` once the anytime-valid bounds exclude a meaningful
   regression (see below); ``hold`` while neither is reached.

The promote rule's 5xx part is on the rollback's scale: the rollback tests the
rate ratio (``H0: psi <= psi0``), so a group is promoted only once the rate
ratio's confidence sequence of the rollout's pooled strata (the open groups'
together, as in the pooled e-process) lies below ``promote_ratio`` (1.5): a bad build, worse
everywhere by that factor, is promoted with probability at most alpha/2 over
the whole rollout. Between ``psi0`` and ``promote_ratio`` either verdict is
acceptable. Where errors are too rare to bound a ratio (a service without
5xx), the canary's pooled 5xx rate bounded by ``promote_error_floor`` (0.01 %)
does instead: an absolute bound on the canary alone, since the pooled arms'
crude rates are not comparable (a ramp of the canary share during an incident
that hit both arms tilts them; the strata of the ratio are immune). The
group's own 5xx increase must also be bounded by the absolute
``promote_error_margin`` (a regression of one group alone, which the pooled
bounds dilute), its own 5xx evidence (the rollback's e-value for the group) must
not lean towards a regression (at most ``promote_error_evidence``, 1:
``leans_to_regression``; an increase under the margin, x2 on a 0.1 % base rate,
shows there long before a rollback), and its p95 increase must be bounded by the
latency threshold. A group's own ratio bound is not asked for: at a 0.1 % base
rate it would take about 10^6 canary requests to reach (README, "Verdict engines
compared"). The groups
pooled are those not rolled back: a group rolled back for its own regression
does not hold the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.canary import evidence, histogram
from pipeline.canary.funnel import MAX_CARRIERS, FunnelFacts, explain
from pipeline.canary.records import Analysis, Decision, WindowCounts

LATENCY_LEVELS = (0.50, 0.95, 0.99)
HISTORY_LIMIT = 720  # windows kept for the report (12 h of minute windows)
#: Earlier stable requests needed before a level's threshold comes from them; until
#: then the pooled current window sets it (also valid: under H0 the arms are exchangeable).
THRESHOLD_MIN_STABLE = 200
RESERVE = 0.1  # weight kept for path groups that join a rollout after its first window
STATE_VERSION = 2
#: (window start, canary counts, stable counts): what a window gained since the last fold.
Increment = tuple[int, WindowCounts, WindowCounts]


@dataclass(slots=True, frozen=True)
class VerdictConfig:
    alpha: float = 0.05
    min_samples: int = 100  # minimum canary exposure (requests) before promote
    latency_threshold_ms: float = 200.0
    psi0: float = 1.1  # null rate ratio for the 5xx e-process
    promote_error_margin: float = 0.005  # largest 5xx increase (absolute) still promotable
    #: Largest rate ratio of the rollout's pooled 5xx rate still promotable (the upper end
    #: of its confidence sequence must lie below): the promote rule on the rollback's scale.
    promote_ratio: float = 1.5
    #: ... or, errors too rare for a ratio, the largest canary 5xx rate (all groups together).
    promote_error_floor: float = 0.0001
    #: Largest 5xx e-value of the group itself (its own rollback evidence, ``H0: psi <=
    #: psi0``) still promotable: the group's evidence must not lean towards a regression.
    #: At least 1: a group without 5xx stays at 1.
    promote_error_evidence: float = 1.0
    warmup_windows: int = 1
    horizon_seconds: float = 3600.0
    srm_z: float = 5.0
    srm_relative: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must lie strictly between 0 and 1")
        if self.min_samples < 1:
            raise ValueError("min_samples must be at least 1")
        if self.latency_threshold_ms < 0:
            raise ValueError("latency_threshold_ms must not be negative")
        if self.psi0 < 1.0:
            raise ValueError("psi0 must be at least 1")
        if not 0.0 < self.promote_error_margin < 1.0:
            raise ValueError("promote_error_margin must lie strictly between 0 and 1")
        if self.promote_ratio <= 1.0:
            raise ValueError("promote_ratio must be above 1")
        if not 0.0 <= self.promote_error_floor <= self.promote_error_margin:
            raise ValueError("promote_error_floor must lie between 0 and promote_error_margin")
        if not self.promote_error_evidence >= 1.0:
            raise ValueError("promote_error_evidence must be at least 1")
        if self.warmup_windows < 0 or self.horizon_seconds <= 0:
            raise ValueError("warmup_windows must be >= 0 and horizon_seconds > 0")


@dataclass(slots=True)
class GroupState:
    """One path group's rollout so far (JSON-serialisable, see ``to_json``)."""

    path_group: str
    first_window: int = -1
    last_window: int = -1  # start of the last folded window
    windows: int = 0
    first_stable: int = 0  # stable requests of the first increment (founders' weights)
    last_canary_at: float = 0.0  # end of the last window with canary traffic
    canary: WindowCounts = field(default_factory=WindowCounts)
    stable: WindowCounts = field(default_factory=WindowCounts)
    # Stable, reweighted window by window to the canary's number of requests: the
    # stratified comparison for the p95 estimate (a ramp during a diurnal swing must
    # not read as a regression).
    stable_weighted: dict[int, float] = field(default_factory=dict)
    error_loglik: list[float] = field(default_factory=evidence.zero_loglik)
    latency_loglik: list[list[float]] = field(
        default_factory=lambda: [evidence.zero_loglik() for _ in LATENCY_LEVELS]
    )
    rolled_back: bool = False
    rollback_reasons: tuple[str, ...] = ()
    history: list[list[float]] = field(default_factory=list)
    folds: int = 0  # folds applied (a fold record applies only on top of its base)
    #: Per live window, its counts already in the evidence: [canary, stable].
    folded: dict[int, list[WindowCounts]] = field(default_factory=dict)
    #: Windows starting at or before this are never folded again (expired, or folded
    #: whole by a version-1 state).
    closed_through: int = -1
    #: The group's fixed share of the rollout's evidence, assigned when it starts
    #: (``assign_weights``); negative: not yet.
    weight: float = -1.0

    def copy(self) -> GroupState:
        return GroupState(
            self.path_group,
            self.first_window,
            self.last_window,
            self.windows,
            self.first_stable,
            self.last_canary_at,
            self.canary.copy(),
            self.stable.copy(),
            dict(self.stable_weighted),
            list(self.error_loglik),
            [list(level) for level in self.latency_loglik],
            self.rolled_back,
            self.rollback_reasons,
            [list(point) for point in self.history],
            self.folds,
            {start: [arm.copy() for arm in arms] for start, arms in self.folded.items()},
            self.closed_through,
            self.weight,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "path_group": self.path_group,
            "first_window": self.first_window,
            "last_window": self.last_window,
            "windows": self.windows,
            "first_stable": self.first_stable,
            "last_canary_at": self.last_canary_at,
            "canary": self.canary.to_json(),
            "stable": self.stable.to_json(),
            "stable_weighted": {str(k): v for k, v in sorted(self.stable_weighted.items())},
            "error_loglik": self.error_loglik,
            "latency_loglik": self.latency_loglik,
            "rolled_back": self.rolled_back,
            "rollback_reasons": list(self.rollback_reasons),
            "history": self.history,
            "folds": self.folds,
            "folded": {
                str(start): [arm.to_json() for arm in arms]
                for start, arms in sorted(self.folded.items())
            },
            "closed_through": self.closed_through,
            "weight": self.weight,
        }

    @classmethod
    def from_json(cls, data: Any) -> GroupState:
        if not isinstance(data, Mapping) or data.get("v") not in (1, STATE_VERSION):
            raise ValueError(f"not a canary group state (version 1 or {STATE_VERSION})")
        try:
            if data["v"] == 1:  # whole windows: those up to the last one are done
                folds, folded, closed, weight = 0, {}, int(data["last_window"]), -1.0
            else:
                folds, closed, weight = (
                    int(data["folds"]),
                    int(data["closed_through"]),
                    float(data["weight"]),
                )
                folded = {
                    int(start): [WindowCounts.from_json(arm) for arm in arms]
                    for start, arms in dict(data["folded"]).items()
                }
                if any(len(arms) != 2 for arms in folded.values()):
                    raise ValueError("a folded window needs both arms")
            error = [float(v) for v in data["error_loglik"]]
            latency = [[float(v) for v in level] for level in data["latency_loglik"]]
            if len(error) != evidence.GRID_SIZE or len(latency) != len(LATENCY_LEVELS):
                raise ValueError("log-likelihood grid of the wrong size")
            if any(len(level) != evidence.GRID_SIZE for level in latency):
                raise ValueError("log-likelihood grid of the wrong size")
            return cls(
                path_group=str(data["path_group"]),
                first_window=int(data["first_window"]),
                last_window=int(data["last_window"]),
                windows=int(data["windows"]),
                first_stable=int(data["first_stable"]),
                last_canary_at=float(data["last_canary_at"]),
                canary=WindowCounts.from_json(data["canary"]),
                stable=WindowCounts.from_json(data["stable"]),
                stable_weighted={
                    int(k): float(v) for k, v in dict(data["stable_weighted"]).items()
                },
                error_loglik=error,
                latency_loglik=latency,
                rolled_back=bool(data["rolled_back"]),
                rollback_reasons=tuple(str(r) for r in data["rollback_reasons"]),
                history=[
                    [math.nan if v is None else float(v) for v in point]
                    for point in data["history"]
                ],
                folds=folds,
                folded=folded,
                closed_through=closed,
                weight=weight,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed canary group state: {exc}") from exc


def slow_counts(counts: WindowCounts, above_bucket: int) -> int:
    """Timed requests in buckets above ``above_bucket`` (exactly: bucket bounds are thresholds)."""
    return sum(count for index, count in counts.latency.items() if index > above_bucket)


def _threshold_bucket(
    state: GroupState, canary: WindowCounts, stable: WindowCounts, q: float
) -> int:
    earlier = state.stable
    need = max(THRESHOLD_MIN_STABLE, int(20 / (1.0 - q)))
    if earlier.timed >= need:
        source = earlier
    else:
        source = canary.copy()
        source.merge(stable)
    value = source.percentile(q)
    return -1 if value is None else histogram.bucket_index(value)


def fold(
    state: GroupState,
    start: int,
    window_seconds: int,
    canary: WindowCounts,
    stable: WindowCounts,
    psi0: float = 1.1,
) -> None:
    """Add one stratum -- the requests a window gained since its last fold -- (in place).

    Which requests are new is ``increments``' business; this folds what it is given.
    """
    if state.first_window < 0:
        if canary.requests <= 0 or stable.requests <= 0:
            return  # the rollout begins with its first increment that has both arms
        state.first_window = start
        state.first_stable = stable.requests
    if start > state.last_window:
        state.last_window = start
        state.windows += 1
    if canary.requests > 0:
        state.last_canary_at = max(state.last_canary_at, float(start + window_seconds))
    evidence.accumulate(
        state.error_loglik,
        evidence.window_loglik(
            canary.errors_5xx,
            canary.errors_5xx + stable.errors_5xx,
            canary.requests,
            stable.requests,
        ),
    )
    if canary.timed > 0 and stable.timed > 0:
        for level, q in enumerate(LATENCY_LEVELS):
            bucket = _threshold_bucket(state, canary, stable, q)
            if bucket < 0:
                continue
            slow_canary = slow_counts(canary, bucket)
            slow_total = slow_canary + slow_counts(stable, bucket)
            evidence.accumulate(
                state.latency_loglik[level],
                evidence.window_loglik(slow_canary, slow_total, canary.timed, stable.timed),
            )
        scale = canary.timed / stable.timed
        weighted = state.stable_weighted
        for index, count in stable.latency.items():
            weighted[index] = weighted.get(index, 0.0) + count * scale
    state.canary.merge(canary)
    state.stable.merge(stable)
    error_e = evidence.log_e_value(state.error_loglik, evidence.grid_index(psi0))
    estimate, lower, upper = evidence.ratio_interval(state.error_loglik, 0.05)
    c95 = histogram.percentile(state.canary.latency, 0.95)
    s95 = histogram.percentile(state.stable_weighted, 0.95)
    delta = math.nan if c95 is None or s95 is None else c95 - s95
    # [window start, log e (5xx), log e (latency), rate ratio, its 95 % CS (upper 0:
    # unbounded), p95 delta (NaN: unknown)]: the report's time series, a point per window
    # (its latest increment's).
    if state.history and state.history[-1][0] == float(start):
        state.history.pop()
    state.history.append(
        [
            float(start),
            error_e,
            latency_log_e(state),
            estimate,
            lower,
            0.0 if math.isinf(upper) else upper,
            delta,
        ]
    )
    if len(state.history) > HISTORY_LIMIT:
        del state.history[: len(state.history) - HISTORY_LIMIT]


def increments(
    state: GroupState,
    canary: Mapping[int, WindowCounts],
    stable: Mapping[int, WindowCounts],
) -> list[Increment]:
    """What each window's counts gained since they were last folded, oldest window first.

    A window whose counts fell below what was folded (a table rebuilt short) is
    skipped until they are back: nothing is ever folded twice. A window where only
    one arm gained waits for the other.
    """
    out: list[Increment] = []
    empty = WindowCounts()
    for start in sorted(set(canary) | set(stable)):
        if start <= state.closed_through:
            continue
        canary_before, stable_before = state.folded.get(start) or (empty, empty)
        canary_new = canary.get(start, empty).minus(canary_before)
        stable_new = stable.get(start, empty).minus(stable_before)
        if canary_new is None or stable_new is None:
            continue
        # A gain of one arm alone says nothing about canary against stable (its table's
        # margins leave no choice); folded, it would be lost for the comparison. It waits
        # until the other arm gains too (a choice made on request counts only, which the
        # strata are conditioned on anyway).
        if canary_new.requests and stable_new.requests:
            out.append((start, canary_new, stable_new))
    return out


@dataclass(slots=True, frozen=True)
class Fold:
    """One evaluation's fold of one group: the record its agent persists with ``apply_fold``."""

    path_group: str
    base: int  # the ``folds`` of the state it applies on top of (else it is stale)
    close_through: int
    weight: float  # the group's weight when it started in this fold (negative: none)
    increments: tuple[Increment, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "path_group": self.path_group,
            "base": self.base,
            "close_through": self.close_through,
            "weight": self.weight,
            "increments": [
                [start, canary.to_json(), stable.to_json()]
                for start, canary, stable in self.increments
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> Fold:
        try:
            return cls(
                path_group=str(data["path_group"]),
                base=int(data["base"]),
                close_through=int(data["close_through"]),
                weight=float(data["weight"]),
                increments=tuple(
                    (int(start), WindowCounts.from_json(canary), WindowCounts.from_json(stable))
                    for start, canary, stable in data["increments"]
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed canary fold: {exc}") from exc

    def apply(self, state: GroupState, window_seconds: int, psi0: float) -> bool:
        """Persist-side: fold into ``state`` if it is the state this fold was made on."""
        if state.folds != self.base:
            return False
        apply_fold(state, self.increments, window_seconds, self.close_through, psi0)
        if state.weight < 0.0 <= self.weight:
            state.weight = self.weight
        return True


def apply_fold(
    state: GroupState,
    found: Sequence[Increment],
    window_seconds: int,
    close_through: int,
    psi0: float = 1.1,
) -> None:
    """Fold the increments as strata, remember them as folded, close expired windows.

    Deterministic: the evaluator and the agent that persists the fold get the same state.
    """
    for start, canary, stable in found:
        fold(state, start, window_seconds, canary, stable, psi0)
        arms = state.folded.get(start)
        if arms is None:
            state.folded[start] = [canary.copy(), stable.copy()]
        else:
            arms[0].merge(canary)
            arms[1].merge(stable)
    if found:
        state.folds += 1
    if close_through > state.closed_through:
        state.closed_through = close_through
        for start in [s for s in state.folded if s <= close_through]:
            del state.folded[start]


def advance(
    state: GroupState,
    canary: Mapping[int, WindowCounts],
    stable: Mapping[int, WindowCounts],
    window_seconds: int,
    close_through: int,
    psi0: float = 1.1,
) -> list[Increment]:
    """Fold what the windows gained since the last fold; returns the increments folded."""
    found = increments(state, canary, stable)
    apply_fold(state, found, window_seconds, close_through, psi0)
    return found


def latency_log_e(state: GroupState) -> float:
    """log of the mean of the latency levels' e-values (H0: canary no slower, psi = 1)."""
    values = [evidence.log_e_value(level, evidence.CENTRE) for level in state.latency_loglik]
    return evidence.log_mean_exp(values)


# --- assessment -----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Assessment:
    """What the rollout's evidence says about one path group (all numbers explained)."""

    path_group: str
    decision: Decision
    reasons: tuple[str, ...]
    analysis: Analysis


@dataclass(slots=True, frozen=True)
class WindowCheck:
    """Data-quality facts about a group's latest complete window (from the live tables)."""

    missing_arm: str | None = None  # "canary" / "stable" when that arm has no requests
    srm_z: float | None = None  # sample-ratio mismatch z-score against the other groups
    srm_share: tuple[float, float] | None = None  # (observed, expected) canary share


def _exp(log_value: float) -> float:
    return math.exp(min(log_value, 700.0))


def weights(states: Mapping[str, GroupState], scale: float = 1.0) -> dict[str, float]:
    """Each started group's fixed share of the rollout's evidence.

    A group keeps the weight it was given when it started (``GroupState.weight``):
    a weighted average of e-processes stays one only if no weight changes after its
    group's evidence has begun to move. The groups that start in the first fold of
    the rollout (the founders) share ``1 - RESERVE`` by the stable traffic of their
    first increment; each group starting later gets half of what is left. ``scale``:
    this worker's share of the canary partitions (every worker splits its own part).
    """
    live = {name: s for name, s in states.items() if s.first_window >= 0}
    out = {name: s.weight for name, s in live.items() if s.weight >= 0.0}
    new = sorted((s.first_window, name) for name, s in live.items() if s.weight < 0.0)
    if not new:
        return out
    if not out:
        start = new[0][0]
        founders = [name for first, name in new if first == start]
        total = sum(live[name].first_stable for name in founders)
        for name in founders:
            share = live[name].first_stable / total if total > 0 else 1.0 / len(founders)
            out[name] = scale * (1.0 - RESERVE) * share
        new = [(first, name) for first, name in new if name not in out]
    left = max(scale - sum(out.values()), 0.0)
    for _, name in new:
        out[name] = left / 2.0
        left /= 2.0
    return out


def assign_weights(states: Mapping[str, GroupState], scale: float = 1.0) -> None:
    """Give the groups that started in this fold their weights (in place; see ``weights``)."""
    for name, weight in weights(states, scale).items():
        if states[name].weight < 0.0:
            states[name].weight = weight


#: Share of the rollout's evidence that the conversion funnels carry when any are
#: configured (their mean); the path groups' evidence keeps the rest. A fixed weighted
#: average of e-processes is an e-process under any dependence. Half: a funnel is
#: configured because a conversion drop matters as much as the 5xx rate and latency
#: together, and a funnel's evidence comes slowly (users, not requests, each judged
#: only once their conversion window is over): at a quarter its rollback needed
#: ln(4/alpha) nats, 46 % above the oracle's ln(1/alpha), and missed issue 17's delay
#: goals; the path groups' families pay ln(0.75/0.5) ~ 0.4 nats more while a funnel is
#: configured (README, "Verdict engines compared"; without funnels they keep everything).
FUNNEL_SHARE = 0.5


@dataclass(slots=True, frozen=True)
class FunnelDecision:
    """A funnel's part in the rollout decision (shown in ``/canary`` and the report)."""

    name: str
    decision: Decision
    reasons: tuple[str, ...]
    facts: FunnelFacts
    weight: float  # its share of the rollout's evidence
    #: The path groups whose verdicts say rollback for it (judged in this evaluation).
    carried_by: tuple[str, ...] = ()
    #: Its other carriers (no rollout judged in this evaluation: another worker owns
    #: their partition, or they have no rollout yet): the worker has the owner of each
    #: mark its rollout state rolled back (``mark_carrier``), with ``carrier_reasons``.
    marked: tuple[str, ...] = ()
    #: What a carrier's verdict says of this funnel's rollback (empty unless rolled back);
    #: the first line starts with ``funnel_reason_head``.
    carrier_reasons: tuple[str, ...] = ()

    @property
    def uncarried(self) -> bool:
        """Rolled back, yet no path group carries it (none known): only ``/canary`` and the
        report say so."""
        return self.decision is Decision.ROLLBACK and not self.carried_by and not self.marked

    def to_json(self) -> dict[str, Any]:
        return {
            **self.facts.to_json(),
            "decision": self.decision.value,
            "reasons": list(self.reasons),
            "weight": self.weight,
            "carried_by": list(self.carried_by),
            "marked": list(self.marked),
        }


def _carried_text(ff: FunnelFacts, carriers: Sequence[str], marked: Sequence[str]) -> str:
    """Which path groups' verdicts say a funnel's rollback, or why none does."""
    left_out = (
        f" ({ff.carriers_left_out} matched requests in path groups beyond the {MAX_CARRIERS} kept)"
        if ff.carriers_left_out
        else ""
    )
    if not carriers and not marked:
        return (
            "not carried: no matched step request had a path group yet, so no path group"
            f" verdict says rollback; act on this funnel's decision{left_out}"
        )
    parts = [f"the path groups {', '.join(carriers)}"] if carriers else []
    if marked:
        parts.append(
            f"{', '.join(marked)} (no rollout judged here: the worker that owns each one's"
            " partition marks its rollout state rolled back, and its verdict says so once"
            " it has a rollout)"
        )
    return f"carried by {'; and '.join(parts)}{left_out}"


def funnel_reason_head(name: str) -> str:
    """How the reasons a funnel's rollback gives its carriers begin (one funnel's mark on
    a path group's state is recognised by it)."""
    return f"funnel {name}: "


def mark_carrier(
    state: GroupState | None,
    path_group: str,
    funnel: str,
    reasons: Sequence[str],
    at: float,
) -> GroupState | None:
    """A funnel's rollback made sticky in one of its carriers' rollout state.

    ``state``: the path group's live rollout state (None: it has none, or its rollout
    ended); ``reasons``: the funnel decision's ``carrier_reasons``; ``at``: when the
    funnel's owner decided (the wall clock). Returns the state to store, or None when
    ``state`` already carries this funnel's rollback: a duplicate or replayed mark
    changes nothing. Without a state a rollout starts, rolled back, at ``at`` (its
    windows fold on top of it); a state rolled back for its own reasons or another
    funnel's keeps them and gains this funnel's. Only the sticky flag and its reasons
    change, never the evidence: what is tested stays the same (alpha holds).
    """
    head = funnel_reason_head(funnel)
    if not reasons or not reasons[0].startswith(head):
        raise ValueError(f"a mark of funnel {funnel!r} must give its reasons first")
    if state is None:
        return GroupState(
            path_group, last_canary_at=at, rolled_back=True, rollback_reasons=tuple(reasons)
        )
    if state.rolled_back and any(r.startswith(head) for r in state.rollback_reasons):
        return None
    marked = state.copy()
    kept = state.rollback_reasons if state.rolled_back else ()
    marked.rolled_back, marked.rollback_reasons = True, (*kept, *reasons)
    return marked


#: Share of the rollout's evidence that pools all path groups (a bad build is bad
#: everywhere: pooled strata add up their information); the rest is the groups' own.
POOLED_SHARE = 0.5
FUNNEL_PREFIX = "funnel:"


@dataclass(slots=True, frozen=True)
class PooledBounds:
    """The 5xx bounds of the rollout's path groups together: the promote rule's scale."""

    ratio_estimate: float = 1.0
    ratio_upper: float = math.inf  # the pooled strata's rate-ratio confidence sequence
    canary_rate_upper: float = 1.0  # the canary's 5xx rate over all its requests, upper bound
    groups: int = 0


def _pooled_bounds(
    states: Mapping[str, GroupState], names: Sequence[str], alpha: float
) -> PooledBounds:
    if not names:
        return PooledBounds()
    estimate, _, upper = evidence.ratio_interval(_pooled_error_loglik(states, names), alpha)
    canary_errors = sum(states[n].canary.errors_5xx for n in names)
    canary_requests = sum(states[n].canary.requests for n in names)
    c_high = evidence.rate_bounds(canary_errors, canary_requests, alpha)[1]
    return PooledBounds(estimate, upper, c_high, len(names))


def _pooled_error_loglik(states: Mapping[str, GroupState], names: Sequence[str]) -> list[float]:
    """The 5xx log-likelihood of the groups' strata together (a common rate ratio)."""
    return [sum(values) for values in zip(*(states[n].error_loglik for n in names), strict=True)]


def _pooled_e(
    states: Mapping[str, GroupState],
    facts: Mapping[str, Mapping[str, Any]],
    null: int,
    config: VerdictConfig,
    weight_scale: float,
) -> float:
    """The e-value of all groups' windows as strata of one test (common rate ratio).

    The stratified log-likelihood of a common psi is the sum of the groups'. The
    latency part counts while the canary-weighted mean p95 increase reaches the
    threshold. Scaled by ``weight_scale`` (this worker's share of the partitions).
    """
    names = [name for name in facts if name in states]
    if not names:
        return 0.0
    error = _pooled_error_loglik(states, names)
    levels = []
    for level in range(len(LATENCY_LEVELS)):
        summed = [
            sum(values)
            for values in zip(*(states[n].latency_loglik[level] for n in names), strict=True)
        ]
        levels.append(evidence.log_e_value(summed, evidence.CENTRE))
    exposure = [(states[n].canary.requests, facts[n]["p95"][0]) for n in names]
    weighted = [(k, d) for k, d in exposure if d is not None and k > 0]
    total = sum(k for k, _ in weighted)
    mean_delta = sum(k * d for k, d in weighted) / total if total else None
    gate = mean_delta is not None and mean_delta >= config.latency_threshold_ms
    error_e = _exp(evidence.log_e_value(error, null))
    latency_e = _exp(evidence.log_mean_exp(levels)) if gate else 0.0
    return weight_scale * (error_e + latency_e) / 2.0


def _p95_delta(state: GroupState, alpha: float) -> tuple[float | None, float | None, float | None]:
    canary_hist = state.canary.latency
    estimate = None
    c95 = histogram.percentile(canary_hist, 0.95, state.canary.min_ms, state.canary.max_ms)
    s95 = histogram.percentile(
        state.stable_weighted, 0.95, state.stable.min_ms, state.stable.max_ms
    )
    if c95 is not None and s95 is not None:
        estimate = c95 - s95
    c_low, c_high = evidence.quantile_bounds(canary_hist, 0.95, alpha / 2.0)
    s_low, s_high = evidence.quantile_bounds(state.stable.latency, 0.95, alpha / 2.0)
    upper = None if c_high is None else c_high - (s_low or 0.0)
    lower = None if c_low is None or s_high is None else c_low - s_high
    return estimate, lower, upper


def _pct(rate: float, digits: int = 2) -> str:
    return f"{rate * 100:.{digits}f}%"


def assess(
    states: Mapping[str, GroupState],
    config: VerdictConfig,
    *,
    window_seconds: int,
    checks: Mapping[str, WindowCheck] | None = None,
    weight_scale: float = 1.0,
    funnels: Mapping[str, FunnelFacts] | None = None,
    funnel_decisions: dict[str, FunnelDecision] | None = None,
    now: float | None = None,
) -> dict[str, Assessment]:
    """The decision for every group with a rollout (see the module docstring).

    ``now``: the evaluation's clock, which tells whether a group's newest window has
    ended (warm-up counts complete windows); without it every folded window has.

    ``funnels``: the conversion funnels' facts (``funnel.facts``); they carry
    ``FUNNEL_SHARE`` of the rollout's evidence, and a funnel named by e-BH, or named
    earlier in the rollout (``FunnelFacts.rolled_back``: sticky on its own), rolls
    back its carriers: its steps' configured path groups and the path groups its
    matched step requests fell into. ``funnel_decisions`` receives each funnel's
    decision, with the path groups that carry it: those judged here, whose verdicts
    say it now, and those ``marked`` (judged elsewhere, or not yet), which the worker
    has their owners mark rolled back (``mark_carrier``).
    """
    checks = checks or {}
    alpha = config.alpha
    threshold = 1.0 / alpha
    group_weights = weights(states, weight_scale)
    null = evidence.grid_index(config.psi0)
    facts: dict[str, dict[str, Any]] = {}
    for name, state in states.items():
        if state.first_window < 0:
            continue
        error_log_e = evidence.log_e_value(state.error_loglik, null)
        lat_log_e = latency_log_e(state)
        p95_est, p95_low, p95_high = _p95_delta(state, alpha)
        gate = p95_est is not None and p95_est >= config.latency_threshold_ms
        error_e = _exp(error_log_e)
        latency_e = _exp(lat_log_e)
        group_e = (error_e + (latency_e if gate else 0.0)) / 2.0
        facts[name] = {
            "error_e": error_e,
            "latency_e": latency_e,
            "gate": gate,
            "e": group_e,
            "p95": (p95_est, p95_low, p95_high),
        }
    pooled = _pooled_e(states, facts, null, config, weight_scale)
    rollout_e = POOLED_SHARE * pooled + (1.0 - POOLED_SHARE) * sum(
        group_weights.get(name, 0.0) * f["e"] for name, f in facts.items()
    )
    funnels = funnels or {}
    groups_share = 1.0
    funnel_weight = 0.0
    if funnels:
        groups_share = 1.0 - FUNNEL_SHARE
        funnel_weight = FUNNEL_SHARE * weight_scale / len(funnels)
        rollout_e = groups_share * rollout_e + sum(
            funnel_weight * f.e_value for f in funnels.values()
        )
    sticky = {name for name, s in states.items() if s.rolled_back}
    named: list[str] = []
    funnel_named: list[str] = []
    if rollout_e >= threshold:
        count = len(facts) + len(funnels)
        weighted = {
            name: count * groups_share * group_weights.get(name, 0.0) * f["e"]
            for name, f in facts.items()
        }
        for name, ff in funnels.items():
            weighted[FUNNEL_PREFIX + name] = count * funnel_weight * ff.e_value
        rejected = evidence.ebh(weighted, alpha) or [max(weighted, key=lambda n: weighted[n])]
        named = [n for n in rejected if not n.startswith(FUNNEL_PREFIX)]
        funnel_named = [n.removeprefix(FUNNEL_PREFIX) for n in rejected if n not in named]
    # A funnel rolled back -- named now, or earlier in the rollout (its own sticky flag,
    # kept in the funnel's state) -- rolls back its carriers (``FunnelFacts.path_groups``:
    # its configured path groups and those its matched requests fell into). A sticky
    # funnel keeps carrying whatever its path groups' own states say, and reaches a
    # carrier first seen after it was named. The test is untouched: a sticky funnel was
    # named by an earlier evaluation, so the event "some rollback in this rollout" is
    # the same, and carriers decide only where the rollback shows.
    # Its carriers not judged here (another worker owns their partition, or they have
    # no rollout yet) are ``marked``: the worker has their owners make the rollback
    # sticky in their states (``mark_carrier``), and their verdicts say it there.
    funnel_reasons: dict[str, list[str]] = {}
    carried_by: dict[str, tuple[str, ...]] = {}
    marked: dict[str, tuple[str, ...]] = {}
    carrier_reasons: dict[str, tuple[str, ...]] = {}
    for name, ff in funnels.items():
        if name not in funnel_named and not ff.rolled_back:
            continue
        why = (
            "the canary converts less"
            if name in funnel_named
            else "rolled back earlier in this rollout (sticky)"
        )
        lines = [
            f"{funnel_reason_head(name)}{why} (evidence {ff.e_value:.3g},"
            f" weight {funnel_weight:.3f}; rollout evidence {rollout_e:.3g}"
            f" vs 1/alpha = {threshold:g})",
            *explain(ff),
        ]
        carriers = tuple(group for group in ff.path_groups if group in facts)
        carried_by[name] = carriers
        marked[name] = tuple(group for group in ff.path_groups if group not in facts)
        carrier_reasons[name] = tuple(lines)
        for group in carriers:
            if group not in named:
                named.append(group)
            funnel_reasons.setdefault(group, []).extend(lines)
    if funnel_decisions is not None:
        for name, ff in funnels.items():
            rolled = name in carried_by
            said = [
                (
                    "rollback: rollout evidence reached 1/alpha (sticky)"
                    if rolled
                    else "hold: funnels never promote on their own"
                ),
                f"evidence {ff.e_value:.3g}, weight {funnel_weight:.3f};"
                f" rollout evidence {rollout_e:.3g} vs 1/alpha = {threshold:g}",
            ]
            if rolled:
                said.append(_carried_text(ff, carried_by[name], marked[name]))
            funnel_decisions[name] = FunnelDecision(
                name,
                Decision.ROLLBACK if rolled else Decision.HOLD,
                (*said, *explain(ff)),
                ff,
                funnel_weight,
                carried_by.get(name, ()),
                marked.get(name, ()),
                carrier_reasons.get(name, ()),
            )
    # The promote rule's 5xx scale: the path groups not rolled back, together (a group
    # rolled back for its own regression does not hold the others).
    pooled_bounds = _pooled_bounds(
        states, [n for n in facts if n in states and n not in sticky and n not in named], alpha
    )
    out: dict[str, Assessment] = {}
    for name, f in facts.items():
        state = states[name]
        canary, stable = state.canary, state.stable
        estimate, lower, upper = evidence.ratio_interval(state.error_loglik, alpha)
        c_high = evidence.rate_bounds(canary.errors_5xx, canary.requests, alpha)[1]
        s_low = evidence.rate_bounds(stable.errors_5xx, stable.requests, alpha)[0]
        increase_upper = c_high - s_low
        p95_est, p95_low, p95_high = f["p95"]
        c_rate = canary.errors_5xx / canary.requests if canary.requests else 0.0
        s_rate = stable.errors_5xx / stable.requests if stable.requests else 0.0
        rates = (
            f"5xx rate over the rollout: canary {_pct(c_rate)}"
            f" ({canary.errors_5xx}/{canary.requests})"
            f" vs stable {_pct(s_rate)} ({stable.errors_5xx}/{stable.requests}),"
            f" rate ratio {estimate:.2f} [{lower:.2f}, {upper:.2f}]"
        )
        weight = group_weights.get(name, 0.0)
        evidence_text = (
            f"evidence {f['e']:.3g} (5xx {f['error_e']:.3g}, latency {f['latency_e']:.3g}"
            f"{'' if f['gate'] else ' not counted: p95 increase below the threshold'}),"
            f" weight {weight:.3f}; rollout evidence {rollout_e:.3g} vs 1/alpha = {threshold:g}"
        )
        latency_text = ""
        if p95_est is not None:
            bounds = (
                f"[{'-inf' if p95_low is None else f'{p95_low:+.0f}'}, "
                f"{'+inf' if p95_high is None else f'{p95_high:+.0f}'}] ms"
            )
            latency_text = (
                f"p95 latency {p95_est:+.1f} ms {bounds}"
                f" vs the {config.latency_threshold_ms:g} ms threshold"
            )
        reasons: list[str] = []
        more: int | None = None
        check = checks.get(name, WindowCheck())
        if name in sticky or name in named:
            decision, rule = (
                Decision.ROLLBACK,
                "rollback: rollout evidence reached 1/alpha (sticky)",
            )
            reasons.extend(funnel_reasons.get(name, ()))
            if f["error_e"] * weight * len(facts) >= 1.0 or f["error_e"] >= threshold:
                reasons.append(f"{rates}: significantly higher (5xx evidence {f['error_e']:.3g})")
            if latency_text and p95_est is not None and p95_est >= config.latency_threshold_ms:
                reasons.append(
                    f"{latency_text}: exceeds the {config.latency_threshold_ms:g} ms threshold"
                    f" (latency evidence {f['latency_e']:.3g})"
                )
            reasons.extend(state.rollback_reasons if name in sticky and not named else ())
            reasons.append(evidence_text)
        else:
            # The other groups are judged on their own; the rollback is said, not imposed.
            decision, rule, reasons, more = _judge_open(
                state,
                config,
                f,
                check,
                rates,
                latency_text,
                evidence_text,
                increase_upper,
                p95_high,
                weight,
                window_seconds,
                now,
                pooled_bounds,
            )
            culprits = sorted(set(named) | sticky)
            if culprits:
                reasons.append(f"the rollout is rolled back because of {', '.join(culprits)}")
        out[name] = Assessment(
            name,
            decision,
            tuple(reasons),
            Analysis(
                rule=rule,
                weight=weight,
                e_value=f["e"],
                error_e_value=f["error_e"],
                latency_e_value=f["latency_e"],
                latency_counted=f["gate"],
                rollout_e_value=rollout_e,
                threshold=threshold,
                rate_ratio=estimate,
                rate_ratio_lower=lower,
                rate_ratio_upper=upper,
                error_increase_upper=increase_upper,
                rollout_rate_ratio_upper=pooled_bounds.ratio_upper,
                rollout_canary_error_rate_upper=pooled_bounds.canary_rate_upper,
                p95_delta_ms=p95_est,
                p95_delta_lower_ms=p95_low,
                p95_delta_upper_ms=p95_high,
                more_canary_requests=more,
                windows=state.windows,
                canary_requests=canary.requests,
                canary_errors_5xx=canary.errors_5xx,
                stable_requests=stable.requests,
                stable_errors_5xx=stable.errors_5xx,
            ),
        )
    return out


def _judge_open(
    state: GroupState,
    config: VerdictConfig,
    f: Mapping[str, Any],
    check: WindowCheck,
    rates: str,
    latency_text: str,
    evidence_text: str,
    increase_upper: float,
    p95_high: float | None,
    weight: float,
    window_seconds: int,
    now: float | None = None,
    pooled: PooledBounds | None = None,
) -> tuple[Decision, str, list[str], int | None]:
    """The decision of a group while the rollout is not rolled back.

    ``pooled``: the 5xx bounds of the rollout's path groups together (none: unbounded).
    """
    canary = state.canary
    pooled = pooled or PooledBounds()
    together = f"{pooled.groups} path group{'' if pooled.groups == 1 else 's'} pooled"
    reasons = [rates]
    if latency_text:
        p95_est = f["p95"][0]
        over = p95_est is not None and p95_est >= config.latency_threshold_ms
        reasons.append(
            latency_text
            + (
                f": exceeds the {config.latency_threshold_ms:g} ms threshold, not yet significant"
                if over
                else ""
            )
        )
    reasons.append(evidence_text)
    more = _more_requests(state, config, f, increase_upper, weight, pooled)
    if more is not None:
        reasons.append(f"about {more} more canary requests for a decision")
    # Windows fold as they fill: the newest may not have ended yet.
    filling = now is not None and state.last_window + window_seconds > now
    complete = max(state.windows - filling, 0)
    if complete < config.warmup_windows:
        return (
            Decision.HOLD,
            "hold: warm-up",
            [f"warm-up: {complete} of {config.warmup_windows} windows complete", *reasons],
            more,
        )
    if check.srm_z is not None and check.srm_share is not None:
        observed, expected = check.srm_share
        return (
            Decision.HOLD,
            "hold: sample-ratio mismatch",
            [
                f"sample-ratio mismatch: canary share {_pct(observed)}"
                f" vs {_pct(expected)} expected (z={check.srm_z:.1f})",
                *reasons,
            ],
            more,
        )
    if check.missing_arm is not None:
        return (
            Decision.HOLD,
            "hold: missing window",
            [f"the latest complete window has no {check.missing_arm} requests", *reasons],
            more,
        )
    if canary.requests < config.min_samples:
        return (
            Decision.INSUFFICIENT_DATA,
            "insufficient_data: below the minimum exposure",
            [
                f"canary: {canary.requests} requests,"
                f" fewer than the minimum of {config.min_samples}",
                *reasons,
            ],
            more,
        )
    timed_short = canary.timed < config.min_samples or state.stable.timed < config.min_samples
    error_ok = increase_upper <= config.promote_error_margin
    ratio_ok = pooled.ratio_upper <= config.promote_ratio
    floor_ok = pooled.canary_rate_upper <= config.promote_error_floor
    quiet = not leans_to_regression(f["error_e"], config)
    latency_ok = (
        not timed_short and p95_high is not None and p95_high <= config.latency_threshold_ms
    )
    if error_ok and (ratio_ok or floor_ok) and quiet and latency_ok:
        rollout_line = (
            f"rollout's 5xx rate ratio ({together}) at most {pooled.ratio_upper:.2f}"
            f" <= promote ratio {config.promote_ratio:g}"
            if ratio_ok
            else f"rollout's canary 5xx rate ({together}) at most"
            f" {_pct(pooled.canary_rate_upper, 3)} <= floor"
            f" {_pct(config.promote_error_floor, 3)} (too few errors for a ratio)"
        )
        return (
            Decision.PROMOTE,
            "promote: the bounds exclude a meaningful regression",
            [
                rollout_line,
                f"5xx increase at most {increase_upper * 100:+.2f} pp"
                f" <= margin {config.promote_error_margin * 100:.2f} pp",
                f"the group's own 5xx evidence {f['error_e']:.3g}"
                f" <= {config.promote_error_evidence:g} (no lean towards a regression)",
                f"p95 increase at most {p95_high:+.0f} ms <= {config.latency_threshold_ms:g} ms",
                *reasons,
            ],
            None,
        )
    if more is not None and state.windows > 0:
        rate = canary.requests / (state.windows * window_seconds)
        if rate <= 0 or more / rate > config.horizon_seconds:
            return (
                Decision.INSUFFICIENT_DATA,
                "insufficient_data: a decision needs more than the horizon",
                [
                    f"at {rate:.2f} canary requests/s a decision needs"
                    f" more than {config.horizon_seconds:g} s",
                    *reasons,
                ],
                more,
            )
    doubts = []
    if not (ratio_ok or floor_ok):
        doubts.append(
            f"rollout's 5xx rate ratio ({together}) could be up to"
            f" {_ratio_text(pooled.ratio_upper)} (promote ratio {config.promote_ratio:g}),"
            f" its canary 5xx rate up to {_pct(pooled.canary_rate_upper, 3)}"
            f" (floor {_pct(config.promote_error_floor, 3)})"
        )
    if not error_ok:
        doubts.append(
            f"5xx increase could be up to {increase_upper * 100:+.2f} pp"
            f" (margin {config.promote_error_margin * 100:.2f} pp)"
        )
    if not quiet:
        doubts.append(
            f"the group's own 5xx evidence {f['error_e']:.3g} is above"
            f" {config.promote_error_evidence:g}: it leans towards a regression"
        )
    if timed_short:
        doubts.append(
            f"p95 latency not compared: fewer than {config.min_samples} timed requests in an arm"
        )
    elif not latency_ok:
        doubts.append("p95 increase not yet bounded below the threshold")
    return Decision.HOLD, "hold: no decision yet", [*doubts, *reasons], more


def leans_to_regression(error_e: float, config: VerdictConfig) -> bool:
    """Whether a group's own 5xx evidence (its rollback e-value, ``H0: psi <= psi0``) is
    above ``promote_error_evidence``: then promote waits, whatever the bounds say.

    A healthy group's e-value drifts below 1 (a test supermartingale) and stays at 1
    without 5xx; a regressed one's climbs long before it reaches the rollback's share of
    1/alpha. Pooling dilutes a regression of one group alone and its absolute increase
    can lie under ``promote_error_margin`` (x2 on a 0.1 % base rate); this is where the
    group's own data speaks (README, "The promote rule").
    """
    return not error_e <= config.promote_error_evidence * (1.0 + 1e-12)


def _ratio_text(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _more_requests(
    state: GroupState,
    config: VerdictConfig,
    f: Mapping[str, Any],
    increase_upper: float,
    weight: float,
    pooled: PooledBounds | None = None,
) -> int | None:
    """About how many more canary requests until promote or rollback (rough, for people).

    Bounds narrow as one over the square root of the requests; every group's traffic is
    taken to grow alike (so the pooled bound's shortfall scales this group's requests).
    """
    n = state.canary.requests
    if n <= 0:
        return None
    guesses: list[float] = []
    log_e = math.log(max(f["e"], 1e-300))
    if log_e > 0 and weight > 0:
        needed = math.log(1.0 / (config.alpha * weight))
        guesses.append(n * max(needed / log_e - 1.0, 0.0))
    c_rate = state.canary.errors_5xx / n
    s_rate = state.stable.errors_5xx / state.stable.requests if state.stable.requests else 0.0
    diff = c_rate - s_rate
    width = increase_upper - diff
    room = config.promote_error_margin - diff
    promote: list[float] = []  # what each of promote's 5xx bounds still needs
    if room > 0 and width > 0:
        promote.append(n * max((width / room) ** 2 - 1.0, 0.0))
    if pooled is not None and pooled.canary_rate_upper > config.promote_error_floor:
        estimate, upper = pooled.ratio_estimate, pooled.ratio_upper
        if math.isinf(upper) or estimate <= 0 or estimate >= config.promote_ratio:
            promote = []  # not in sight (the floor is for services without errors)
        else:
            spread = math.log(upper / estimate)
            margin = math.log(config.promote_ratio / estimate)
            promote.append(n * max((spread / margin) ** 2 - 1.0, 0.0))
    if promote:
        guesses.append(max(promote))
    if not guesses:
        return None
    return round(min(guesses))
