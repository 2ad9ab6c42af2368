"""Conversion funnels: specs, step matching, per-user progress, the conversion e-process (pure).

A funnel is an ordered list of steps, each a request pattern (path group,
route or path regex; method; status class). Its unit is a user, named by a
configurable key: a cookie, a header or the client address. A user *reaches*
step ``k + 1`` when a request of theirs matches it at most ``window_seconds``
after they reached step ``k``; per arm (the user's stage at step 0) the
funnel's conversion at step ``k`` is the share of the users who reached ``k``
and went on to ``k + 1`` in time. Each user counts once per step.

Privacy: the user key is hashed (``user_hash``) on the worker before it
leaves the batch; only the hash is kept in state, and neither appears in a
metric label or a log line.

Statistics (``evidence``'s grid and mixtures)
---------------------------------------------
Users are grouped by the window (the canary window size) in which they
reached step ``k``: a *stratum*. A stratum is judged only once every user in
it has had the full conversion window (plus one window of grace for late
events): right-censoring -- a user still inside their window is not yet a
non-converter. The stratum is then a 2x2 table canary/stable x
not converted/converted. Given its margins, the canary's number of
non-converters follows Fisher's noncentral hypergeometric law in the odds
ratio ``omega`` (canary/stable odds of not converting); ``fisher_loglik``
adds its exact log-likelihood on ``evidence.GRID`` (``log omega``) to the
step's grid. The family is exponential in ``log omega`` and exact at
``omega = 1``, so a mixture of likelihood ratios above 1 (``drop_log_e``: the
funnel's prior, most of it on the odds ratios of plausible drops) is an
e-process for ``H0: the canary converts at least as well``, at any conversion
rate (unlike the rare-event binomial split of the 5xx test, which loses most
of its power when the event is common). Stratifying by the time users
*entered* keeps a moving canary share (1 -> 5 -> 25 -> 50 %) from reading as
a conversion change.

A funnel's e-value is three quarters that of one odds ratio common to all its
steps (their log-likelihoods add up) and a quarter the mean of its steps' own
e-values (``funnel_log_e``), each part counted only while the estimated drop in
conversion reaches ``min_drop`` (a gate can only lower an e-value). The
engine mixes the funnels into the rollout's evidence (``engine.assess``).

Late hits: a judged stratum stays judged
----------------------------------------
The hits of one stratum can arrive in records far apart (one input partition lagging
the others by more than the window and its grace, a backfill): the stratum may be
judged from the first records' hits before the rest arrive. ``resolve`` closes every
stratum up to its horizon, ``FunnelState.judged_through`` (one number, persisted with
the state: the strata are judged in order of their start, so everything at or before
it is judged, those that had no users too). A hit that would count in a closed stratum
is *late*: an entry is counted in ``late_entries`` and left out of the stratum, a
conversion in ``late_conversions`` (its user stays the non-converter the stratum was
judged with). A closed stratum is never re-opened, so no user's entry and conversion
land in two different tables, and a row never holds more conversions than entries.

Why the e-process stays valid (anytime, at level alpha). Each stratum enters the
product of likelihood ratios once, when it is judged, with its margins (who entered,
per arm; how many did not convert) fixed then; nothing that arrives later changes a
factor already in the product, so the sequence the verdicts look at is one process.
(Before, a late entry re-created the stratum and it was judged a second time: one
stratum's users and conversions entered the product twice, the double counting no
test supermartingale allows.) What arrives late is decided by the transport (a
partition's lag, a backfill), not by a user's arm or outcome: leaving a late entrant
out of a table is a selection on entry that does not look at the outcome, and
Fisher's conditional law holds given the margins of whoever was selected; a late
conversion counts as a non-conversion of its user, and the same delay thins the
conversions of both arms alike, which keeps H0 (the canary converts at least as well:
``p_c >= p_s`` gives ``q p_c >= q p_s`` for an equal share ``q`` arriving in time).
Under H0 each factor then has expectation <= 1 given the past, and the mixture, the
weighted average over transitions and the gates keep that (see above): Ville's
inequality bounds the chance that the funnel's e-value ever reaches ``1/alpha``. A
delay that depends on the arm (canary and stable logs on different partitions, one of
them lagging beyond the grace) would thin one arm's conversions only: that is outside
this guarantee, as it was before; ``late_conversions`` shows it.

What a verdict sees is what the state keeps
-------------------------------------------
The verdicts read the stored state only; nothing judges a stratum on a copy. The
funnel's own clock (its newest hit) judges in the agent after each record; the stream's
clock (the newest window of any path group, the wall clock once traffic stopped) can be
ahead of it -- a quiet funnel, a lagging funnel partition -- and then the timer sends a
``ResolveRequest`` to the funnel's partition and the agent judges the stored state at
that clock (``ResolveRequest.apply``). So each stratum is judged once, in the state, and
every evaluation sees the strata judged so far, each in the version the state keeps: the
sequence of funnel e-values the verdicts look at is one e-process over a nested
filtration, whatever the lag and whatever becomes of a control record (a duplicate judges
nothing more, a lost one is sent again by the next evaluation, one made for another
rollout's state is ignored). (Before, the timer judged due strata on a copy at every
evaluation and kept nothing: under a lagging funnel partition a verdict saw a stratum
with its first hits and a later one the same stratum as the state judged it with more --
two factors for one stratum.) The price is delay, not evidence: a stratum the stream's
clock makes due enters the verdicts one evaluation later (plus the funnel partition's
lag), after a wait of ``window_seconds`` and two canary windows; the request queues
behind the hits produced before it, so a lagging partition's hits are in the stratum
when it is judged rather than late.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from pipeline.canary import evidence

STATE_VERSION = 1
#: The 2x2 counts of a stratum or of the whole rollout at one step:
#: [canary reached, canary converted, stable reached, stable converted].
CountsRow = list[int]
HISTORY_LIMIT = 720
DEFAULT_WINDOW_SECONDS = 600.0
DEFAULT_MAX_USERS = 100_000
#: Path groups a funnel remembers as the carriers of its rollback (those its matched step
#: requests fell into). Path groups come from the path rules, or from the URL's first
#: segments where no rule gives one, so a ``path`` regex over user-named URLs could meet
#: many: the cap keeps the state and each hits record small, and what it left out is
#: counted (``FunnelState.carriers_left_out``), never silently lost.
MAX_CARRIERS = 16
ARMS = ("stable", "canary")  # index = arm code
USER_KEY_KINDS = ("cookie", "header", "client_ip")
STATUS_CLASSES = {"1xx": 1, "2xx": 2, "3xx": 3, "4xx": 4, "5xx": 5}


# --- specs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step's request pattern; every given part must match (at least one is given)."""

    path_group: str | None = None  # equal to the request's path group
    route: str | None = None  # equal to the request's route (path rules)
    path: str | None = None  # regex, full match on the URL path
    method: str | None = None  # upper-case
    status_class: int | None = None  # 2 for 2xx

    def label(self) -> str:
        parts = [self.method or "*", self.path_group or self.route or self.path or "*"]
        if self.status_class is not None:
            parts.append(f"{self.status_class}xx")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class FunnelSpec:
    name: str
    steps: tuple[StepSpec, ...]
    user_key: tuple[str, str]  # ("cookie", name) | ("header", name) | ("client_ip", "")
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    min_drop: float = 0.0  # smallest absolute conversion drop worth a rollback
    max_users: int = DEFAULT_MAX_USERS
    patterns: tuple[re.Pattern[str] | None, ...] = field(default=(), compare=False, repr=False)


def _user_key(value: Any, where: str) -> tuple[str, str]:
    if not isinstance(value, str):
        raise ValueError(f"{where}: user_key must be 'cookie:NAME', 'header:NAME' or 'client_ip'")
    kind, _, name = value.partition(":")
    kind = kind.strip().lower()
    name = name.strip().lower()
    if kind == "client_ip" and not name:
        return ("client_ip", "")
    if kind in ("cookie", "header") and name:
        return (kind, name.replace("_", "-") if kind == "header" else name)
    raise ValueError(f"{where}: user_key must be 'cookie:NAME', 'header:NAME' or 'client_ip'")


def _step(raw: Any, where: str) -> StepSpec:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: a step must be an object")
    unknown = set(raw) - {"path_group", "route", "path", "method", "status_class"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key in ("path_group", "route", "path", "method"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: {key} must be a non-empty string")
        values[key] = value.strip()
    if not any(k in values for k in ("path_group", "route", "path")):
        raise ValueError(f"{where}: needs a path_group, a route or a path regex")
    if "path" in values:
        try:
            re.compile(values["path"])
        except re.error as exc:
            raise ValueError(f"{where}: path is not a valid regular expression: {exc}") from exc
    if "method" in values:
        values["method"] = values["method"].upper()
    status = raw.get("status_class")
    if status is not None:
        if not isinstance(status, str) or status.lower() not in STATUS_CLASSES:
            raise ValueError(f"{where}: status_class must be one of 1xx .. 5xx")
        values["status_class"] = STATUS_CLASSES[status.lower()]
    return StepSpec(**values)


def parse_funnels(text: str) -> tuple[FunnelSpec, ...]:
    """The ``GRAYSCOPE_CANARY_FUNNELS`` setting (a JSON list); ``ValueError`` says what is wrong."""
    if not text.strip():
        return ()
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise ValueError("must be a JSON list of funnels")
    out: list[FunnelSpec] = []
    for index, item in enumerate(raw):
        where = f"funnel {index}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: must be an object")
        unknown = set(item) - {
            "name",
            "steps",
            "user_key",
            "window_seconds",
            "min_drop",
            "max_users",
        }
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        name = item.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise ValueError(f"{where}: name must be 1-64 letters, digits, '_', '.' or '-'")
        where = f"funnel {name!r}"
        if any(f.name == name for f in out):
            raise ValueError(f"{where}: the name is used twice")
        steps_raw = item.get("steps")
        if not isinstance(steps_raw, list) or not 2 <= len(steps_raw) <= 10:
            raise ValueError(f"{where}: steps must be a list of 2 to 10 steps")
        steps = tuple(_step(s, f"{where} step {i}") for i, s in enumerate(steps_raw))
        window = item.get("window_seconds", DEFAULT_WINDOW_SECONDS)
        if isinstance(window, bool) or not isinstance(window, int | float) or window <= 0:
            raise ValueError(f"{where}: window_seconds must be a positive number")
        min_drop = item.get("min_drop", 0.0)
        if isinstance(min_drop, bool) or not isinstance(min_drop, int | float):
            raise ValueError(f"{where}: min_drop must be a number in [0, 1)")
        if not 0.0 <= min_drop < 1.0:
            raise ValueError(f"{where}: min_drop must be a number in [0, 1)")
        max_users = item.get("max_users", DEFAULT_MAX_USERS)
        if isinstance(max_users, bool) or not isinstance(max_users, int) or max_users < 1:
            raise ValueError(f"{where}: max_users must be a positive integer")
        out.append(
            FunnelSpec(
                name=name,
                steps=steps,
                user_key=_user_key(item.get("user_key", "client_ip"), where),
                window_seconds=float(window),
                min_drop=float(min_drop),
                max_users=max_users,
                patterns=tuple(None if s.path is None else re.compile(s.path) for s in steps),
            )
        )
    return tuple(out)


def user_keys(specs: Sequence[FunnelSpec]) -> tuple[tuple[str, str], ...]:
    """The distinct user keys the funnels need, in first-use order (what the core extracts)."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        if spec.user_key not in out:
            out.append(spec.user_key)
    return tuple(out)


# --- matching ------------------------------------------------------------------


def matching_steps(
    spec: FunnelSpec,
    path: str | None,
    route: str | None,
    path_group: str | None,
    method: str | None,
    status: int | None,
) -> list[int]:
    """Indices of the steps this request matches (usually none or one)."""
    out = []
    for index, step in enumerate(spec.steps):
        if step.path_group is not None and step.path_group != path_group:
            continue
        if step.route is not None and step.route != route:
            continue
        if step.method is not None and (method or "").upper() != step.method:
            continue
        if step.status_class is not None and (status is None or status // 100 != step.status_class):
            continue
        if step.path is not None:
            pattern = spec.patterns[index] if spec.patterns else re.compile(step.path)
            if path is None or pattern is None or pattern.fullmatch(path) is None:
                continue
        out.append(index)
    return out


def user_hash(funnel: str, key: str) -> str:
    """The user as state keeps them: 64 bits of a keyed BLAKE2b, never the key itself."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, key=b"grayscope")
    digest.update(funnel.encode())
    return digest.hexdigest()


# A funnel hit as it travels from the batch side to the table owner:
# (user hash, step, arm code (1 canary, 0 stable), event time in epoch seconds).
Hit = tuple[str, int, int, float]


def hits_of(
    specs: Sequence[FunnelSpec],
    inputs: Sequence[tuple[Any, ...]],
    keys: Sequence[tuple[str, str]],
    carriers: dict[str, dict[str, int]] | None = None,
) -> tuple[dict[str, list[Hit]], int]:
    """Funnel hits per funnel from the core's ``funnel_inputs``; also the matches without a key.

    ``inputs``: (url path, route, path group, method, status, time ns, stage, user keys).
    ``carriers``, when given, receives per funnel the path groups of the requests that
    made hits, with their request counts: the funnel's rollback is carried by them (a
    route or path step names no path group of its own). Bounded by the batch; the
    observer caps what it buffers (``merge_carriers``).
    """
    out: dict[str, list[Hit]] = {}
    keyless = 0
    key_index = {key: i for i, key in enumerate(keys)}
    for path, route, path_group, method, status, timestamp_ns, stage, values in inputs:
        if not timestamp_ns:
            continue
        for spec in specs:
            steps = matching_steps(spec, path, route, path_group, method, status)
            if not steps:
                continue
            value = values[key_index[spec.user_key]]
            if not value:
                keyless += 1
                continue
            user = user_hash(spec.name, value)
            if carriers is not None and path_group:
                seen = carriers.setdefault(spec.name, {})
                seen[path_group] = seen.get(path_group, 0) + 1
            arm = 1 if stage == "canary" else 0
            at = timestamp_ns / 1e9
            bucket = out.setdefault(spec.name, [])
            for step in steps:
                bucket.append((user, step, arm, at))
    return out, keyless


def count_carrier(carriers: dict[str, int], path_group: str, requests: int) -> int:
    """Add ``requests`` matched step requests of ``path_group`` to ``carriers`` (in place),
    keeping at most ``MAX_CARRIERS`` path groups; returns the requests left out (0 when
    kept). First come, first kept: a carrier, once kept, is never displaced (the rollback
    it carries must not move to another path group as traffic shifts)."""
    if path_group in carriers or len(carriers) < MAX_CARRIERS:
        carriers[path_group] = carriers.get(path_group, 0) + requests
        return 0
    return requests


def merge_carriers(carriers: dict[str, int], seen: Mapping[str, int]) -> int:
    """``count_carrier`` for every path group of ``seen`` (path group -> requests, as
    ``hits_of`` counts them or a hits record carries them); returns the requests left out."""
    return sum(
        count_carrier(carriers, str(path_group), max(int(requests), 0))
        for path_group, requests in seen.items()
    )


# --- per-user progress and the funnel's state ------------------------------------


@dataclass(slots=True)
class FunnelState:
    """One funnel's rollout so far (JSON-serialisable): the changelogged table's value."""

    name: str
    steps: int
    pending: dict[str, CountsRow] = field(default_factory=dict)  # "step:stratum start"
    totals: list[CountsRow] = field(default_factory=list)  # resolved, per step
    loglik: list[list[float]] = field(default_factory=list)  # per step (non-conversion ratio)
    watermark: float = 0.0  # newest event time seen (event-time clock of the funnel)
    last_canary_at: float = 0.0
    late_conversions: int = 0  # conversions of a stratum already judged
    late_entries: int = 0  # entries into a stratum already judged (left out of it)
    #: Every stratum starting at or before this event time is judged (``resolve``'s
    #: horizon; strata are judged in order): its late hits count as late, it is never
    #: re-opened. None: not known yet -- a fresh state, or one persisted before this was
    #: kept (then it is what its last ``resolve`` used; ``judged_horizon``).
    judged_through: float | None = None
    evicted_users: int = 0  # users dropped by the cap before their window ended
    history: list[list[float]] = field(default_factory=list)
    rolled_back: bool = False  # sticky for the rollout (set through a control record)
    #: Path group -> matched step requests seen in it this rollout (at most
    #: ``MAX_CARRIERS``): the path groups that carry the funnel's rollback.
    carriers: dict[str, int] = field(default_factory=dict)
    carriers_left_out: int = 0  # matched step requests whose path group the cap left out
    #: Names this rollout's state (the agent gives each fresh state a random one; "" in a
    #: state persisted before): a user's progress names the state that counted it, and
    #: progress another state counted starts afresh (``record_hit``).
    rollout: str = ""

    def add_carriers(self, seen: Mapping[str, int], left_out: int = 0) -> None:
        """Merge a hits record's path groups (``hits_of``'s ``carriers``) into the state."""
        self.carriers_left_out += max(int(left_out), 0) + merge_carriers(self.carriers, seen)

    def __post_init__(self) -> None:
        transitions = max(self.steps - 1, 0)
        if not self.totals:
            self.totals = [[0, 0, 0, 0] for _ in range(transitions)]
        if not self.loglik:
            self.loglik = [evidence.zero_loglik() for _ in range(transitions)]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": STATE_VERSION,
            "name": self.name,
            "steps": self.steps,
            "pending": self.pending,
            "totals": self.totals,
            "loglik": self.loglik,
            "watermark": self.watermark,
            "last_canary_at": self.last_canary_at,
            "late": self.late_conversions,
            "late_entries": self.late_entries,
            "evicted": self.evicted_users,
            "rolled_back": self.rolled_back,
            "history": [[v if math.isfinite(v) else None for v in p] for p in self.history],
            "carriers": self.carriers,
            "carriers_left_out": self.carriers_left_out,
            "rollout": self.rollout,
        }
        if self.judged_through is not None:  # unknown (a state read from before): left out
            judged = self.judged_through
            out["judged_through"] = judged if math.isfinite(judged) else None  # None: -inf
        return out

    @classmethod
    def from_json(cls, data: Any) -> FunnelState:
        if not isinstance(data, Mapping) or data.get("v") != STATE_VERSION:
            raise ValueError("not a funnel state (version 1)")
        try:
            steps = int(data["steps"])
            loglik = [[float(v) for v in row] for row in data["loglik"]]
            if len(loglik) != steps - 1 or any(len(r) != evidence.GRID_SIZE for r in loglik):
                raise ValueError("log-likelihood grid of the wrong size")
            totals = [[int(v) for v in row] for row in data["totals"]]
            if len(totals) != steps - 1 or any(len(r) != 4 for r in totals):
                raise ValueError("funnel totals of the wrong size")
            # Added later: a state persisted before has no carriers (empty, nothing left
            # out); they fill again from the next hits. Beyond the cap (a smaller cap
            # than the writer's) the most used are kept and the rest counted.
            carried = sorted(
                ((str(k), int(v)) for k, v in dict(data.get("carriers") or {}).items()),
                key=lambda item: (-item[1], item[0]),
            )
            left_out = int(data.get("carriers_left_out") or 0)
            left_out += sum(v for _, v in carried[MAX_CARRIERS:])
            return cls(
                name=str(data["name"]),
                steps=steps,
                pending={str(k): [int(v) for v in row] for k, row in dict(data["pending"]).items()},
                totals=totals,
                loglik=loglik,
                watermark=float(data["watermark"]),
                last_canary_at=float(data["last_canary_at"]),
                late_conversions=int(data["late"]),
                # Added later: a state persisted before has no late entries, and its
                # judged horizon is the one its last resolve used (``judged_horizon``).
                late_entries=int(data.get("late_entries") or 0),
                judged_through=(
                    None
                    if "judged_through" not in data
                    else -math.inf
                    if data["judged_through"] is None
                    else float(data["judged_through"])
                ),
                evicted_users=int(data["evicted"]),
                rolled_back=bool(data.get("rolled_back", False)),
                history=[
                    [-math.inf if v is None else float(v) for v in point]
                    for point in data["history"]
                ],
                carriers=dict(carried[:MAX_CARRIERS]),
                carriers_left_out=left_out,
                rollout=str(data.get("rollout") or ""),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed funnel state: {exc}") from exc


def fisher_loglik(x: int, m: int, n1: int, n0: int) -> list[float] | None:
    """One stratum's exact log-likelihood of ``x`` canary events among ``m`` on the grid.

    Fisher's noncentral hypergeometric: ``P(x) = C(n1,x) C(n0,m-x) w^x / sum_u (...)``
    with ``log w`` at each grid point; the ``x``-only terms cancel in every ratio and are
    left out. None when the stratum carries no information (no events, no non-events,
    or an arm without users).
    """
    if n1 <= 0 or n0 <= 0 or m <= 0 or m >= n1 + n0:
        return None
    if not max(0, m - n0) <= x <= min(n1, m):
        raise ValueError("canary events must fit the stratum's margins")
    lg = math.lgamma
    low, high = max(0, m - n0), min(n1, m)
    weights = [
        -lg(u + 1) - lg(n1 - u + 1) - lg(m - u + 1) - lg(n0 - m + u + 1)
        for u in range(low, high + 1)
    ]
    kept = list(enumerate(weights, start=low))
    out = []
    for log_w in evidence.GRID:
        terms = [w + u * log_w for u, w in kept]
        peak = max(terms)
        log_norm = peak + math.log(sum(math.exp(t - peak) for t in terms))
        out.append(x * log_w - log_norm)
    return out


def _stratum(step: int, at: float, bucket: int) -> str:
    return f"{step}:{_start(at, bucket)}"


def _start(at: float, bucket: int) -> int:
    return int(at // bucket) * bucket


def _horizon(spec: FunnelSpec, clock: float, bucket: int) -> float:
    """The newest stratum start whose users have all had their window (and its grace)."""
    return clock - spec.window_seconds - 2 * bucket


def judged_horizon(spec: FunnelSpec, state: FunnelState, bucket: int) -> float:
    """``state.judged_through``, set first when unknown: a fresh state has judged nothing
    (``-inf``); a state persisted before the horizon was kept had its strata judged up to
    the horizon of its watermark (the agent resolves after every record it applies)."""
    if state.judged_through is None:
        state.judged_through = (
            _horizon(spec, state.watermark, bucket) if state.watermark > 0 else -math.inf
        )
    return state.judged_through


def _count(
    state: FunnelState, step: int, at: float, arm: int, bucket: int, converted: bool
) -> None:
    """Count a user's entry into (or conversion out of) the stratum of step ``step`` at
    ``at``; into ``late_entries`` / ``late_conversions`` when that stratum is judged.

    Within one state every conversion lands in the row that holds its user's entry: the
    entry was counted in a live row or left out as late, and a row leaves ``pending``
    only when ``resolve`` closes its stratum for good; progress another state counted
    starts afresh (``record_hit``). So a row without the entry (or with every entry of
    the arm converted already) is never met; if it were (a state lost while its users'
    progress was kept), the conversion is late: a row never holds more conversions than
    entries (``fisher_loglik``'s margins)."""
    if step >= state.steps - 1:
        return  # the last step has no next one to convert to
    judged = state.judged_through
    if judged is not None and _start(at, bucket) <= judged:
        if converted:  # the user was counted as not converted (or was left out)
            state.late_conversions += 1
        else:
            state.late_entries += 1
        return
    key = _stratum(step, at, bucket)
    row = state.pending.get(key)
    offset = 0 if arm == 1 else 2
    if converted and (row is None or row[offset + 1] >= row[offset]):
        state.late_conversions += 1
        return
    if row is None:
        row = state.pending[key] = [0, 0, 0, 0]
    row[offset + (1 if converted else 0)] += 1


#: Logs at second resolution (nginx) can put a next step up to a second before the step
#: it follows: within this tolerance the order of two steps is taken as logged.
ORDER_TOLERANCE_S = 1.0


def record_hit(
    spec: FunnelSpec,
    state: FunnelState,
    progress: Mapping[str, Any] | None,
    hit: Hit,
    bucket: int,
) -> dict[str, Any] | None:
    """Apply one hit to a user's progress; the new progress, or None when nothing changed.

    Progress is ``{"a": arm code at step 0 (None before), "t": [time per step or None],
    "c": steps counted so far, "r": the state's ``rollout`` (left out when "")}``; progress
    counted by another state (an ended rollout: its strata went with it) or of another
    shape of the funnel starts afresh, so a conversion only ever meets the row that holds
    its user's entry, or a judged stratum. A user enters at step 0 (once per retention) and
    reaches ``k + 1`` when a hit of step ``k + 1`` lies within the window after step
    ``k``. Hits may arrive out of order (the access-log partitions are consumed side by
    side): a later step seen first is kept and counted once its predecessor arrives.
    """
    _, step, arm, at = hit
    judged_horizon(spec, state, bucket)  # before this hit moves the watermark
    state.watermark = max(state.watermark, at)
    if arm == 1:
        state.last_canary_at = max(state.last_canary_at, at)
    if step >= len(spec.steps):
        return None
    if (
        progress is None
        or not valid_progress(spec, progress)
        or progress.get("r", "") != state.rollout
    ):
        progress = None  # another state's user, or another shape of the funnel: afresh
    if progress is None:
        progress = {"a": None, "t": [None] * len(spec.steps), "c": 0}
    times: list[float | None] = list(progress["t"])
    counted = int(progress.get("c", sum(t is not None for t in times)))
    if step < counted:
        return None  # this step is counted already: once per step
    kept = times[step]
    if step == 0:
        if kept is not None:
            return None
        times[0] = at
        user_arm = arm
    else:
        user_arm = progress["a"]
        previous = times[step - 1]
        fits_kept = kept is not None and previous is not None and _follows(kept, previous, spec)
        if kept is not None and (fits_kept or (previous is None and at > kept)):
            return None  # keep the hit that follows its step, else the earliest
        times[step] = at
    while counted < len(times):
        if counted == 0:
            if times[0] is None:
                break
            _count(state, 0, times[0], int(user_arm), bucket, converted=False)
        else:
            previous, current = times[counted - 1], times[counted]
            if previous is None or current is None or not _follows(current, previous, spec):
                break
            _count(state, counted - 1, previous, int(user_arm), bucket, converted=True)
            _count(state, counted, current, int(user_arm), bucket, converted=False)
        counted += 1
    out = {"a": user_arm, "t": times, "c": counted}
    if state.rollout:
        out["r"] = state.rollout
    return out


def valid_progress(spec: FunnelSpec, progress: Mapping[str, Any] | None) -> bool:
    """A user's stored progress fits this funnel (its steps may have changed since)."""
    if not isinstance(progress, Mapping):
        return False
    times = progress.get("t")
    return (
        isinstance(times, list)
        and len(times) == len(spec.steps)
        and all(t is None or isinstance(t, int | float) for t in times)
        and (times[0] is None or progress.get("a") in (0, 1))
        and isinstance(progress.get("c", 0), int)
    )


def apply_record(
    spec: FunnelSpec,
    state: FunnelState,
    progress_of: Callable[[str], Mapping[str, Any] | None],
    hits: Sequence[Hit],
    bucket: int,
) -> dict[str, dict[str, Any]]:
    """One funnel record: its hits in event-time order, then the strata due judged.

    Changes ``state`` in place and returns the users' new progress (user hash ->
    progress) without writing it: the caller writes both only once this returned, so a
    record is applied whole or not at all. ``progress_of`` reads a user's stored
    progress. Raises nothing on well-formed hits: rows hold at most their entries'
    conversions (``_count``), and progress of another shape starts afresh.
    """
    updates: dict[str, dict[str, Any]] = {}
    for hit in sorted(hits, key=lambda h: h[3]):
        user = hit[0]
        progress = updates[user] if user in updates else progress_of(user)
        changed = record_hit(spec, state, progress, hit, bucket)
        if changed is not None:
            updates[user] = changed
    resolve(spec, state, bucket)
    return updates


def _follows(current: float, previous: float, spec: FunnelSpec) -> bool:
    return previous - ORDER_TOLERANCE_S <= current <= previous + spec.window_seconds


def last_seen(progress: Mapping[str, Any]) -> float:
    return max(t for t in progress["t"] if t is not None)


def user_expired(spec: FunnelSpec, progress: Mapping[str, Any], now: float, bucket: int) -> bool:
    """Past its last step's window plus a window of grace: nothing it does can count any more."""
    return last_seen(progress) + spec.window_seconds + 2 * bucket <= now


def _stratum_key(key: str) -> tuple[int, int]:
    """A ``pending`` key as (stratum start, step): the order ``resolve`` judges in."""
    step_text, start_text = key.split(":")
    return int(start_text), int(step_text)


def resolve(spec: FunnelSpec, state: FunnelState, bucket: int, up_to: float | None = None) -> int:
    """Judge every stratum whose users have all had their full window; returns how many.

    The clock is the funnel's event time (``state.watermark``), or ``up_to`` when later:
    the event time of the whole stream (the wall clock once traffic stopped), which the
    verdict timer asks the agent to judge the stored state at (``ResolveRequest``), so
    that a quiet or lagging funnel is still judged (a stratum judged early misses
    conversions of both arms alike: power, not validity).
    """
    done = 0
    judged = judged_horizon(spec, state, bucket)
    clock = state.watermark if up_to is None else max(state.watermark, up_to)
    horizon = _horizon(spec, clock, bucket)
    for key in sorted(state.pending, key=_stratum_key):
        start, step = _stratum_key(key)
        if start > horizon:
            continue
        c_reached, c_conv, s_reached, s_conv = state.pending.pop(key)
        not_c, not_s = c_reached - c_conv, s_reached - s_conv
        evidence.accumulate(
            state.loglik[step], fisher_loglik(not_c, not_c + not_s, c_reached, s_reached)
        )
        total = state.totals[step]
        for i, value in enumerate((c_reached, c_conv, s_reached, s_conv)):
            total[i] += value
        done += 1
    # Every stratum up to the horizon is judged now, those without users too: from here
    # their hits are late (``_count``), and none of them is ever judged again.
    state.judged_through = max(judged, horizon)
    if done:
        state.history.append([float(clock), funnel_log_e(spec, state)])
        del state.history[:-HISTORY_LIMIT]
    return done


@dataclass(frozen=True, slots=True)
class ResolveRequest:
    """The verdict timer's request to judge a funnel's stored state at the stream's clock.

    The timer never judges a funnel itself: a verdict looks at the stored state only, and
    when the stream's event time (``up_to``) makes strata due that the state has not
    judged (``resolve_request``), the timer sends this to the funnel's partition, behind
    the hits already there; the agent judges the state at ``up_to`` (``apply``) and the
    next verdicts see those strata as the state keeps them. Idempotent (a duplicate or a
    replay judges nothing more; a lost one is sent again by the next evaluation) and made
    for one rollout's state (``rollout``): another rollout's state is left alone.
    """

    funnel: str
    rollout: str
    up_to: float  # the stream's event time (epoch seconds) the strata are judged by

    def to_json(self) -> dict[str, Any]:
        return {"funnel": self.funnel, "rollout": self.rollout, "up_to": self.up_to}

    @classmethod
    def from_json(cls, data: Any) -> ResolveRequest:
        try:
            request = cls(str(data["funnel"]), str(data["rollout"]), float(data["up_to"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed funnel resolve request: {exc}") from exc
        if not math.isfinite(request.up_to):
            raise ValueError("a funnel resolve request needs a finite time")
        return request

    def apply(self, spec: FunnelSpec, state: FunnelState, bucket: int) -> bool:
        """Persist-side: judge ``state`` at ``up_to`` if it is the rollout's; True when
        that changed the state (a stratum judged, or the judged horizon moved on)."""
        if state.rollout != self.rollout or state.steps != len(spec.steps):
            return False
        before = judged_horizon(spec, state, bucket)
        return resolve(spec, state, bucket, up_to=self.up_to) > 0 or (
            state.judged_through != before
        )


def resolve_request(
    spec: FunnelSpec, state: FunnelState, bucket: int, up_to: float
) -> ResolveRequest | None:
    """What the timer asks of the agent at the stream's clock ``up_to``: a request when
    strata with users are due by it that ``state`` has not judged, else None (strata
    without users are closed by the next request, or by the funnel's own clock)."""
    horizon = _horizon(spec, max(state.watermark, up_to), bucket)
    if not any(_stratum_key(key)[0] <= horizon for key in state.pending):
        return None
    return ResolveRequest(spec.name, state.rollout, up_to)


# --- evidence and explanation ------------------------------------------------------


def conversion(converted: int, reached: int) -> float | None:
    return converted / reached if reached else None


def drop_estimate(row: Sequence[int]) -> float | None:
    """Stable's conversion minus the canary's (positive: the canary converts less)."""
    c, s = conversion(row[1], row[0]), conversion(row[3], row[2])
    return None if c is None or s is None else s - c


#: The funnel's mixture over drops (its prior), fixed before any data: nine tenths on
#: the grid points ``log omega`` = 0.1 .. 1.0 above the null (``evidence.GRID_STEP``
#: apart), weighted log-uniformly (~ 1/offset), and a tenth on the 5xx test's points
#: above 1.0 (``evidence.OFFSETS``: 1.3, 1.7, 2.2, 3.0; a broken step). A relative
#: conversion drop of 10-30 % at conversions of 20-65 % is a log odds ratio of
#: non-conversion of 0.13-0.80 (5-50 % at 20-80 %: 0.06-1.8). The 5xx test's mixture
#: (11 points out to 3.0, equally weighted) puts 4 of its 11 points above 1.0, where a
#: funnel's drops rarely are; a mixture pays about -log of its prior mass near the
#: truth, so mass near the drops that happen is what shortens the delay. Smaller drops
#: are still found through the bottom point, later.
_CORE: Final = tuple(range(2, 21))
_TAIL: Final = tuple(o for o in evidence.OFFSETS if o > _CORE[-1])
_TAIL_MASS: Final = 0.1
DROP_OFFSETS: Final[tuple[int, ...]] = _CORE + _TAIL
DROP_LOG_WEIGHTS: Final[tuple[float, ...]] = tuple(
    [math.log((1.0 - _TAIL_MASS) / o / sum(1.0 / k for k in _CORE)) for o in _CORE]
    + [math.log(_TAIL_MASS / len(_TAIL))] * len(_TAIL)
)
#: Share of a funnel's e-value bet on one odds ratio common to all its transitions (a
#: build that loses users at one step tends to lose them at the others, and the common
#: part pays the prior's price once for all of them); the rest is split equally among
#: the transitions alone (a drop at one step only).
COMMON_WEIGHT: Final = 0.75


def drop_log_e(loglik: Sequence[float]) -> float:
    """log of the funnel prior's mixture of likelihood ratios against ``omega = 1``.

    Every component is an alternative above the null of an exponential family in
    ``log omega``, so its likelihood ratio has expectation <= 1 at every ``omega <= 1``
    (H0: the canary converts no less), and so has the mixture."""
    base = loglik[evidence.CENTRE]
    return evidence.log_mean_exp(
        [
            loglik[evidence.CENTRE + offset] - base + log_w
            for offset, log_w in zip(DROP_OFFSETS, DROP_LOG_WEIGHTS, strict=True)
        ],
        1,  # the weights are in the terms: a plain log-sum-exp
    )


def _counted(spec: FunnelSpec, drop: float | None) -> bool:
    """A transition's drop estimate is worth a rollback: positive and at least ``min_drop``."""
    return drop is not None and drop > 0.0 and drop >= spec.min_drop


def step_log_e(spec: FunnelSpec, state: FunnelState, step: int) -> float:
    """log e-value of step ``step`` (H0: the canary converts no less), gated by ``min_drop``."""
    if not _counted(spec, drop_estimate(state.totals[step])):
        return -math.inf
    return drop_log_e(state.loglik[step])


def common_log_e(spec: FunnelSpec, state: FunnelState) -> float:
    """log e-value of one odds ratio common to every transition (H0: the canary converts
    no less at any step), counted while every transition with users in both arms shows
    a drop worth a rollback (a transition without them has added no evidence).

    The steps' log-likelihoods add up: at a fixed ``omega`` the product of the strata's
    likelihood ratios over all transitions is a test supermartingale, each stratum being
    conditioned on its margins, which hold the earlier transitions' outcomes (tower
    property); the mixture over ``omega`` and the gate keep it one."""
    drops = [drop_estimate(row) for row in state.totals]
    known = [d for d in drops if d is not None]
    if not known or not all(_counted(spec, d) for d in known):
        return -math.inf
    summed = [sum(values) for values in zip(*state.loglik, strict=True)]
    return drop_log_e(summed)


def funnel_log_e(spec: FunnelSpec, state: FunnelState) -> float:
    """log of the funnel's e-value: ``COMMON_WEIGHT`` of the common odds ratio's, the rest
    split equally among its transitions' own (gated) e-values.

    The common part spends every transition's evidence at once for the price of one
    mixture (the product of the transitions' separate mixtures paid the prior's price at
    every step); the transitions alone keep a drop at one step from being diluted by the
    others (a drop only at a later step, with fewer users, would be found by the common
    part several times later). A fixed average of e-processes is one. One transition:
    its own e-value.
    """
    transitions = state.steps - 1
    values = [step_log_e(spec, state, k) for k in range(transitions)]
    if transitions <= 1:
        return values[0] if values else -math.inf
    log_alone = math.log((1.0 - COMMON_WEIGHT) / transitions)
    return evidence.log_mean_exp(
        [common_log_e(spec, state) + math.log(COMMON_WEIGHT)]
        + [value + log_alone for value in values],
        1,  # the weights are in the terms: a plain log-sum-exp
    )


@dataclass(slots=True, frozen=True)
class StepFacts:
    """One transition (step k -> k + 1) as the verdict explains it."""

    label: str  # "GET /play -> POST /play/compile"
    canary_reached: int
    canary_converted: int
    stable_reached: int
    stable_converted: int
    pending_canary: int  # reached, window not yet over (right-censored)
    pending_stable: int
    drop: float | None  # stable minus canary conversion
    drop_lower: float | None  # anytime-valid bounds of the drop
    drop_upper: float | None
    ratio: float  # canary/stable odds ratio of not converting (stratified estimate)
    ratio_lower: float
    ratio_upper: float
    e_value: float
    counted: bool  # the drop reached min_drop

    def to_json(self) -> dict[str, Any]:
        def finite(v: float | None) -> float | None:
            return None if v is None or math.isinf(v) or math.isnan(v) else round(v, 6)

        return {
            "step": self.label,
            "canary": {
                "reached": self.canary_reached,
                "converted": self.canary_converted,
                "pending": self.pending_canary,
                "conversion": finite(conversion(self.canary_converted, self.canary_reached)),
            },
            "stable": {
                "reached": self.stable_reached,
                "converted": self.stable_converted,
                "pending": self.pending_stable,
                "conversion": finite(conversion(self.stable_converted, self.stable_reached)),
            },
            "drop": finite(self.drop),
            "drop_lower": finite(self.drop_lower),
            "drop_upper": finite(self.drop_upper),
            "non_conversion_odds_ratio": finite(self.ratio),
            "non_conversion_odds_ratio_lower": finite(self.ratio_lower),
            "non_conversion_odds_ratio_upper": finite(self.ratio_upper),
            "e_value": finite(self.e_value),
            "counted": self.counted,
        }


@dataclass(slots=True, frozen=True)
class FunnelFacts:
    """What the engine needs of one funnel: its e-value and the explanation."""

    name: str
    e_value: float
    steps: tuple[StepFacts, ...]
    #: The path groups that carry a funnel rollback (``carrier_groups``): the steps'
    #: configured ones, then those the matched step requests fell into.
    path_groups: tuple[str, ...]
    late_conversions: int = 0
    late_entries: int = 0
    evicted_users: int = 0
    history: tuple[tuple[float, float], ...] = ()  # (event time, log e-value) per judged batch
    rolled_back: bool = False  # an earlier evaluation rolled the funnel back (sticky)
    carriers_left_out: int = 0  # matched step requests whose path group the cap left out

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "history": [[t, v if math.isfinite(v) else None] for t, v in self.history],
            "e_value": None if math.isinf(self.e_value) else round(self.e_value, 6),
            "steps": [s.to_json() for s in self.steps],
            "path_groups": list(self.path_groups),
            "carriers_left_out": self.carriers_left_out,
            "late_conversions": self.late_conversions,
            "late_entries": self.late_entries,
            "evicted_users": self.evicted_users,
        }


def facts(spec: FunnelSpec, state: FunnelState, alpha: float) -> FunnelFacts:
    pending = [[0, 0] for _ in range(max(state.steps - 1, 0))]
    for key, row in state.pending.items():
        step = int(key.split(":")[0])
        if step < len(pending):
            pending[step][0] += row[0]
            pending[step][1] += row[2]
    steps = []
    for k, row in enumerate(state.totals):
        c_reached, c_conv, s_reached, s_conv = row
        c_low, c_high = evidence.rate_bounds(c_conv, c_reached, alpha / 2.0)
        s_low, s_high = evidence.rate_bounds(s_conv, s_reached, alpha / 2.0)
        both = c_reached > 0 and s_reached > 0
        ratio, r_low, r_high = evidence.ratio_interval(state.loglik[k], alpha)
        log_e = step_log_e(spec, state, k)
        drop = drop_estimate(row)
        steps.append(
            StepFacts(
                label=f"{spec.steps[k].label()} -> {spec.steps[k + 1].label()}",
                canary_reached=c_reached,
                canary_converted=c_conv,
                stable_reached=s_reached,
                stable_converted=s_conv,
                pending_canary=pending[k][0],
                pending_stable=pending[k][1],
                drop=drop,
                drop_lower=s_low - c_high if both else None,
                drop_upper=s_high - c_low if both else None,
                ratio=ratio,
                ratio_lower=r_low,
                ratio_upper=r_high,
                e_value=math.exp(min(drop_log_e(state.loglik[k]), 700)),
                counted=log_e > -math.inf,
            )
        )
    return FunnelFacts(
        name=spec.name,
        e_value=math.exp(min(funnel_log_e(spec, state), 700.0)),
        steps=tuple(steps),
        path_groups=carrier_groups(spec, state),
        late_conversions=state.late_conversions,
        late_entries=state.late_entries,
        evicted_users=state.evicted_users,
        history=tuple((p[0], p[1]) for p in state.history if len(p) >= 2),
        rolled_back=state.rolled_back,
        carriers_left_out=state.carriers_left_out,
    )


def carrier_groups(spec: FunnelSpec, state: FunnelState) -> tuple[str, ...]:
    """The path groups that say ``rollback`` when the funnel is rolled back: the steps'
    configured path groups, then every path group its matched step requests fell into
    this rollout (most requests first), of any step.

    Every step's, not only those of the transitions that dropped: a transition's drop
    does not say which of its two steps is at fault (a broken page at step k loses the
    users as surely as a failing step k + 1), three quarters of a funnel's evidence is
    one odds ratio common to all its steps, which points at no step, and which
    transitions show a drop can change from one evaluation to the next while the
    rollback is sticky: the carriers would wander. It is also what configured
    ``path_group`` steps have always done. Who carries the verdict does not change what
    is tested: the funnel's e-value and its share of the rollout's evidence are the same.
    """
    configured = [s.path_group for s in spec.steps if s.path_group]
    observed = sorted(state.carriers, key=lambda g: (-state.carriers[g], g))
    return tuple(dict.fromkeys([*configured, *observed]))


def explain(f: FunnelFacts) -> list[str]:
    """One line per transition: counts per arm, the drop with its bounds, the evidence."""
    lines = []
    for s in f.steps:
        c = conversion(s.canary_converted, s.canary_reached)
        st = conversion(s.stable_converted, s.stable_reached)
        rate = (
            f"canary {'-' if c is None else f'{c * 100:.1f}%'}"
            f" ({s.canary_converted}/{s.canary_reached}, {s.pending_canary} pending)"
            f" vs stable {'-' if st is None else f'{st * 100:.1f}%'}"
            f" ({s.stable_converted}/{s.stable_reached}, {s.pending_stable} pending)"
        )
        drop = ""
        if s.drop is not None:
            low = "-" if s.drop_lower is None else f"{s.drop_lower * 100:+.1f}"
            high = "-" if s.drop_upper is None else f"{s.drop_upper * 100:+.1f}"
            drop = f", drop {s.drop * 100:+.1f} pp [{low}, {high}]"
        counted = "" if s.counted else " (not counted: no drop beyond min_drop)"
        lines.append(f"funnel {f.name} {s.label}: {rate}{drop}, evidence {s.e_value:.3g}{counted}")
    return lines
