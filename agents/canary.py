"""Canary analysis on Faust: windowed tables, their agent, the verdict timer, ``/canary``.

Data flow and why
-----------------
Faust tables are sharded like the stream that updates them: a table write
goes to the changelog partition of the event being processed, and a restarted
(or new) owner of that partition rebuilds the table from it. The access-log
topics are partitioned however the shippers chose, so the enrich agent cannot
keep per-path-group counts itself: one path group's requests are spread over
every partition and every worker. Hence:

1. ``BatchHandler`` hands each delivered batch to ``CanaryObserver``
   (``pipeline/canary/observer.py``), which folds it into one compact
   ``CanaryAggregate`` per (path group, event-time window) and produces it to
   the internal topic ``<app id>-canary-aggregates``, keyed by path group on
   the partition ``partition_for(path_group)``.
2. The ``grayscope-canary`` agent consumes that topic and merges each
   aggregate into two windowed tables (tumbling windows with ``expires``,
   changelogged): ``canary-by-stage`` keyed ``(path group, stage)`` and
   ``canary-by-version`` keyed ``(path group, version)``. Both have the
   topic's partition count, so each changelog partition matches its source
   partition and one owner holds *both arms* of a path group.
3. A timer on every worker judges the path groups of the partitions it owns
   actively (standby copies are skipped) every ``interval_seconds``: each group's
   rollout state (``pipeline/canary/engine.py``: the e-processes, cumulative
   counts and histograms, the sticky rollback) plus what its live windows
   gained since the state was folded, decided by the anytime-valid engine.
   The timer cannot write a table: it sends each such fold (the increments,
   on top of the state's fold count) as a control record on the aggregates
   topic, and the agent applies exactly that fold to the changelogged table
   ``canary-evidence`` keyed by path group -- the windows expire, the
   rollout's evidence must not. Until the agent has applied it the timer
   judges on from the state it sent, so every evaluation looks at one
   process. A path group without canary traffic for ``rollout_idle_seconds``
   starts a new rollout. A new rollback is made sticky the same way.
   Changed verdicts go to the verdict topic and, when a store is configured,
   to ``grayscope-verdicts``. ``GET /canary`` shows the latest evaluation
   (``?format=text`` as a table; ``?format=html`` or a browser: the report).

5. Conversion funnels (``GRAYSCOPE_CANARY_FUNNELS``, ``pipeline/canary/funnel.py``):
   the observer matches each request against the funnels' steps and produces
   one record per funnel per flush with the hits -- (hashed user key, step,
   arm, event time) -- to the partition of ``funnel:<name>``. The agent keeps
   each user's progress in ``canary-funnel-users`` (key ``<funnel>/<hash>``)
   and the funnel's strata, totals and evidence in ``canary-funnels``, both
   changelogged; a record's progress and state are written once both are worked
   out (whole or not at all), and a stratum, once judged, stays judged (its late
   hits are counted as late). The agent judges the strata due by the funnel's own
   event time after each record; strata the stream's event time makes due (a quiet
   funnel, a lagging funnel partition) it judges when the timer asks (a
   ``funnel_resolve`` control record, idempotent, sent again every evaluation until
   the state has them). The timer never judges a funnel itself: the verdicts see the
   stored state, each stratum in the one version the state keeps. Users past
   their window plus a window of grace are deleted, and above ``max_users`` the
   longest idle are evicted (counted). Each record
   also names the path groups its hits' requests fell into; the funnel's state
   keeps them (at most ``funnel.MAX_CARRIERS``, the rest counted). The timer
   passes the funnels to the engine: they carry a share of the rollout's
   evidence, and a funnel's rollback -- sticky in its state, like a path
   group's -- is carried by its steps' configured path groups and those
   observed path groups. The funnel's owner judges the carriers of the
   partitions it owns; for every other carrier (another worker's partition, or
   no rollout yet) it sends a ``carrier_rollback`` control record keyed by the
   carrier to the carrier's partition, and that partition's owner makes the
   rollback sticky in the carrier's ``canary-evidence`` state (idempotent: a
   duplicate or replayed record changes nothing; sent again once a window and
   by a new owner of the funnel). A rolled-back funnel nothing carries (no
   path group known yet) is logged once and says so in ``/canary``.

Windows are placed by the request's own time (``@timestamp``); an aggregate
whose window has already expired (Faust's rule, see ``pipeline/canary/windows.py``)
is counted as late and ignored. Aggregates are produced after the batch was
delivered and are best-effort, like spans: a crash between delivery and the
producer's flush loses one batch's counts, a replayed batch counts twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import faust
import orjson
from aiohttp.web import Response
from faust.types import EventT

from pipeline.canary import funnel as funnels
from pipeline.canary import windows
from pipeline.canary.config import CanaryConfig
from pipeline.canary.counters import CanaryStats
from pipeline.canary.engine import (
    FUNNEL_PREFIX,
    Fold,
    FunnelDecision,
    GroupState,
    mark_carrier,
)
from pipeline.canary.format import format_verdicts
from pipeline.canary.observer import CanaryObserver
from pipeline.canary.records import (
    CanaryAggregate,
    Decision,
    Verdict,
    WindowCounts,
    epoch_to_iso,
)
from pipeline.canary.report import render_html, rollout_series
from pipeline.canary.routing import partition_for
from pipeline.canary.verdict import Row, evaluate
from pipeline.errors import SinkError
from schemas import VERDICTS_INDEX

log = logging.getLogger(__name__)

STAGE_TABLE = "canary-by-stage"
VERSION_TABLE = "canary-by-version"
EVIDENCE_TABLE = "canary-evidence"
CONTROL_ROLLBACK = "rollback"  # control record: make a rollback sticky in the state
CONTROL_FUNNEL = "funnel"  # a batch's hits of one funnel (hashed users)
CONTROL_FUNNEL_ROLLBACK = "funnel_rollback"  # make a funnel's rollback sticky
CONTROL_CARRIER_ROLLBACK = "carrier_rollback"  # make a funnel's rollback sticky in a carrier
CONTROL_FOLD = "fold"  # the increments an evaluation folded into a group's state
CONTROL_FUNNEL_RESOLVE = "funnel_resolve"  # judge a funnel's state at the stream's clock
#: Evaluations a sent fold may wait for the agent before the timer goes back to the
#: table's state (a lost record: its increments are folded again, once, from there).
FOLD_PENDING_INTERVALS = 5
FUNNEL_USERS_TABLE = "canary-funnel-users"
FUNNEL_TABLE = "canary-funnels"
TIMELINE_LIMIT = 500  # decision changes kept per path group for the report
AGENT_NAME = "grayscope-canary"
PUBLISH_TIMEOUT = 30.0
DRAIN_TIMEOUT = 5.0

Fingerprint = tuple[Any, ...]


def aggregates_topic_name(app_id: str) -> str:
    return f"{app_id}-canary-aggregates"


class CanaryAnalysis:
    """The Faust-facing shell around the pure canary core, one per app."""

    def __init__(
        self, app: faust.App, config: CanaryConfig, es_service: Any, stats: CanaryStats
    ) -> None:
        self.app = app
        self.config = config
        self.es_service = es_service
        self.stats = stats
        self.aggregates_topic = app.topic(
            aggregates_topic_name(app.conf.id),
            partitions=config.partitions,
            internal=True,  # declared by Faust with this partition count before subscribing
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.verdict_topic = app.topic(
            config.verdict_topic,
            partitions=1,  # low volume; one partition keeps verdicts in order
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        # Windowed tables are addressed with explicit (key, window range) keys:
        # every aggregate names its window, so nothing is re-derived from
        # message timestamps. tumbling() still gives Faust's expiry and the
        # changelog retention.
        self.by_stage = self._table(STAGE_TABLE, "canary counts per (path group, stage)")
        self.by_version = self._table(VERSION_TABLE, "canary counts per (path group, version)")
        self.evidence = app.Table(
            EVIDENCE_TABLE,
            partitions=config.partitions,
            help="canary rollout state per path group (evidence, cumulative counts)",
        )
        # Funnels: per-user progress keyed "<funnel>/<user hash>" and the funnel's state,
        # both on the partition of "funnel:<name>" (one owner holds a funnel whole).
        self.funnel_specs = {spec.name: spec for spec in config.funnels}
        self.funnel_users: Any = None
        self.funnel_states: Any = None
        if self.funnel_specs:
            self.funnel_users = app.Table(
                FUNNEL_USERS_TABLE,
                partitions=config.partitions,
                help="conversion funnel progress per (funnel, hashed user key)",
            )
            self.funnel_states = app.Table(
                FUNNEL_TABLE,
                partitions=config.partitions,
                help="conversion funnel state per funnel (strata, totals, evidence)",
            )
        self.funnel_decisions: dict[str, FunnelDecision] = {}
        self._funnel_sticky: set[str] = set()  # funnel rollbacks not yet in the table
        self._funnel_uncarried_warned: set[str] = set()  # rolled back, no carrier: logged
        # (funnel, carrier) -> when its mark was last sent to the carrier's owner.
        self._carrier_marks_sent: dict[tuple[str, str], float] = {}
        self._last_aggregate_at = 0.0  # wall clock of the last aggregate applied
        self._funnel_gc: dict[str, float] = {}
        # Folds sent by the timer and not yet applied by the agent: (state after, sent at).
        self._sent_folds: dict[str, tuple[GroupState, float]] = {}
        self._watermark: dict[str, int] = {}  # path group -> newest window start seen
        self.judged_states: dict[str, GroupState] = {}  # what the last verdicts saw
        self.timeline: dict[str, list[tuple[float, str]]] = {}  # decision changes, per group
        self._sticky: dict[str, tuple[str, ...]] = {}  # rollbacks not yet in the table
        self.verdicts: list[Verdict] = []
        self.evaluated_at: float | None = None
        self._published: dict[str, Fingerprint] = {}
        self._last_gc: dict[int, float] = {}

    def _table(self, name: str, help_text: str) -> Any:
        wrapper = self.app.Table(name, partitions=self.config.partitions, help=help_text).tumbling(
            self.config.window_seconds, expires=self.config.expires_seconds
        )
        return wrapper.table

    # -- batch side ----------------------------------------------------------

    def publish_aggregates(self, aggregates: Sequence[CanaryAggregate]) -> None:
        """The observer's ``publish``: buffer aggregates on the app's producer (no wait)."""
        for agg in aggregates:
            self._send_to_owner(agg.path_group, orjson.dumps(agg.to_json()))

    def publish_funnel(
        self,
        name: str,
        hits: Sequence[funnels.Hit],
        carriers: Mapping[str, int] | None = None,
        carriers_left_out: int = 0,
    ) -> None:
        """The observer's funnel hook: one record per funnel, to the funnel's owner, with
        the path groups the hits' requests fell into (the carriers of its rollback)."""
        record = {
            "kind": CONTROL_FUNNEL,
            "funnel": name,
            "hits": list(hits),
            "carriers": dict(carriers or {}),
            "carriers_left_out": carriers_left_out,
        }
        self._send_to_owner(FUNNEL_PREFIX + name, orjson.dumps(record))

    def _send_to_owner(self, key: str, value: bytes) -> None:
        """One record on the aggregates topic, to the partition whose owner keeps ``key``
        (a path group, or ``funnel:<name>``)."""
        self.aggregates_topic.send_soon(
            key=key.encode(), value=value, partition=partition_for(key, self.config.partitions)
        )

    def _rollout_ended(self, last_canary_at: float, now: float) -> bool:
        """No canary traffic for ``rollout_idle_seconds``: the next one starts afresh."""
        return last_canary_at < now - self.config.rollout_idle_seconds

    # -- table side (inside the agent: table writes need the current event) ---

    def apply(self, event: EventT, now: float | None = None) -> None:
        now = time.time() if now is None else now
        try:
            data = orjson.loads(event.value)
            # A control record names its kind; an aggregate has none.
            kind = data.get("kind") if isinstance(data, dict) else None
            if kind == CONTROL_ROLLBACK:
                self._apply_rollback(data)
                return
            if kind == CONTROL_FUNNEL:
                self.apply_funnel(data)
                return
            if kind == CONTROL_FUNNEL_ROLLBACK:
                self._apply_funnel_rollback(str(data.get("funnel")))
                return
            if kind == CONTROL_CARRIER_ROLLBACK:
                self._apply_carrier_rollback(data, now)
                return
            if kind == CONTROL_FOLD:
                self._apply_fold(Fold.from_json(data), now)
                return
            if kind == CONTROL_FUNNEL_RESOLVE:
                self._apply_funnel_resolve(funnels.ResolveRequest.from_json(data))
                return
            agg = CanaryAggregate.from_json(data)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            self.stats.canary_aggregates_invalid_total += 1
            log.warning("ignoring an invalid canary aggregate: %s", exc)
            return
        config = self.config
        placement = windows.place(
            agg.window_start, config.window_seconds, config.expires_seconds, now
        )
        if placement is windows.Placement.LATE:
            self.stats.canary_late_events_total += agg.requests
        elif placement is windows.Placement.FUTURE:
            self.stats.canary_future_events_total += agg.requests
        else:
            self._merge(self.by_stage, agg, agg.by_stage)
            self._merge(self.by_version, agg, agg.by_version)
            self.stats.canary_aggregates_applied_total += 1
            self._last_aggregate_at = now
            watermark = self._watermark.get(agg.path_group, agg.window_start)
            self._watermark[agg.path_group] = max(watermark, agg.window_start)
        self._collect_garbage(event.message.partition, now)

    def funnel_state(self, name: str) -> funnels.FunnelState | None:
        stored = None if self.funnel_states is None else self.funnel_states.get(name)
        if stored is None:
            return None
        try:
            return funnels.FunnelState.from_json(stored)
        except ValueError as exc:
            log.warning("discarding an unreadable funnel state for %s: %s", name, exc)
            return None

    def apply_funnel(self, data: dict[str, Any]) -> None:
        """Apply one funnel record: users' progress, then strata whose window is over."""
        spec = self.funnel_specs.get(str(data.get("funnel")))
        raw_hits = data.get("hits")
        if spec is None or self.funnel_users is None or not isinstance(raw_hits, list):
            self.stats.canary_aggregates_invalid_total += 1
            return
        hits: list[funnels.Hit] = []
        for raw in raw_hits:
            try:
                user, step, arm, at = raw
                hit = (str(user), int(step), int(arm), float(at))
            except (TypeError, ValueError):
                self.stats.canary_aggregates_invalid_total += 1
                continue
            if hit[1] < 0 or hit[2] not in (0, 1) or not math.isfinite(hit[3]):
                self.stats.canary_aggregates_invalid_total += 1
                continue
            hits.append(hit)
        if not hits:
            return
        bucket = self.config.window_seconds
        state = self.funnel_state(spec.name)
        newest = max(hit[3] for hit in hits)
        if state is not None and self._rollout_ended(state.last_canary_at, newest):
            state = None  # the rollout ended: a new one starts with fresh evidence
        if state is None or state.steps != len(spec.steps):
            # A new rollout's state: users its predecessor counted start afresh in it.
            state = funnels.FunnelState(spec.name, len(spec.steps), rollout=secrets.token_hex(8))
        late, late_entries = state.late_conversions, state.late_entries
        users = self.funnel_users
        prefix = spec.name + "/"
        carriers = data.get("carriers")  # a record of an older worker has none: no carriers
        try:
            state.add_carriers(
                carriers if isinstance(carriers, dict) else {},
                int(data.get("carriers_left_out") or 0),
            )
        except (TypeError, ValueError):
            self.stats.canary_aggregates_invalid_total += 1
        # Users' progress, then the strata due, on this copy of the state; nothing is
        # written before both are done: a record is applied whole or not at all.
        updates = funnels.apply_record(
            spec, state, lambda user: users.get(prefix + user), hits, bucket
        )
        for user, progress in updates.items():
            users[prefix + user] = progress
        self.stats.canary_funnel_late_conversions_total += state.late_conversions - late
        self.stats.canary_funnel_late_entries_total += state.late_entries - late_entries
        self._collect_funnel_users(spec, state)
        self.funnel_states[spec.name] = state.to_json()
        self.stats.canary_funnel_hits_applied_total += len(hits)

    def _apply_funnel_resolve(self, request: funnels.ResolveRequest) -> None:
        """Judge a funnel's stored state at the stream's clock, as the timer asked
        (``_funnel_facts``): only the rollout's state it was asked for; a duplicate, a
        replay or another rollout's request changes nothing and is counted."""
        spec = self.funnel_specs.get(request.funnel)
        state = None if spec is None else self.funnel_state(spec.name)
        if spec is None or state is None:
            self.stats.canary_funnel_resolves_unchanged_total += 1
            return
        if not request.apply(spec, state, self.config.window_seconds):
            self.stats.canary_funnel_resolves_unchanged_total += 1
            return
        self.funnel_states[spec.name] = state.to_json()

    def _apply_funnel_rollback(self, name: str) -> None:
        state = self.funnel_state(name)
        if state is None or self.funnel_states is None:
            return
        state.rolled_back = True
        self.funnel_states[name] = state.to_json()
        self._funnel_sticky.discard(name)

    def _collect_funnel_users(self, spec: funnels.FunnelSpec, state: funnels.FunnelState) -> None:
        """Retention, at most once a window per funnel (event time): users past their
        window and a window of grace are deleted (tombstones keep the changelog
        bounded); above ``max_users`` the longest-idle users are evicted and counted."""
        bucket = self.config.window_seconds
        now = state.watermark
        if now - self._funnel_gc.get(spec.name, -math.inf) < bucket:
            return
        self._funnel_gc[spec.name] = now
        users = self.funnel_users
        prefix = spec.name + "/"
        live: list[tuple[float, str]] = []
        for key, progress in list(users.items()):
            if not str(key).startswith(prefix):
                continue
            try:
                if funnels.user_expired(spec, progress, now, bucket):
                    users.pop(key, None)
                    self.stats.canary_funnel_users_expired_total += 1
                    continue
                live.append((funnels.last_seen(progress), str(key)))
            except (KeyError, TypeError, ValueError):
                users.pop(key, None)
        excess = len(live) - spec.max_users
        if excess > 0:
            live.sort()
            for _, key in live[:excess]:
                users.pop(key, None)
            state.evicted_users += excess
            self.stats.canary_funnel_users_evicted_total += excess
            live = live[excess:]
        self.stats.canary_funnel_users = len(live)

    def _state(self, path_group: str) -> GroupState | None:
        stored = self.evidence.get(path_group)
        if stored is None:
            return None
        try:
            return GroupState.from_json(stored)
        except ValueError as exc:
            log.warning("discarding an unreadable canary state for %s: %s", path_group, exc)
            return None

    def _apply_rollback(self, data: dict[str, Any]) -> None:
        path_group = str(data.get("path_group") or "")
        if not path_group:
            return
        # Decided on windows not folded yet, the state may not exist: it starts rolled back.
        state = self._state(path_group) or GroupState(path_group)
        state.last_canary_at = max(state.last_canary_at, time.time())  # a live rollout
        state.rolled_back = True
        state.rollback_reasons = tuple(str(r) for r in data.get("reasons") or ())
        self.evidence[path_group] = state.to_json()
        self._sticky.pop(path_group, None)

    def _apply_carrier_rollback(self, data: dict[str, Any], now: float) -> None:
        """A funnel's rollback, sent by the funnel's owner to the owner of a carrier's
        partition (here): made sticky in the carrier's state, which its verdicts here
        then say. Idempotent: a duplicate or replayed mark changes nothing, and one older
        than ``rollout_idle_seconds`` is of an ended rollout."""
        path_group, name = str(data.get("path_group") or ""), str(data.get("funnel") or "")
        at = float(data.get("at", math.nan))
        reasons = tuple(str(r) for r in data.get("reasons") or ())
        if not path_group or not name or not math.isfinite(at):
            raise ValueError("a carrier rollback needs a path group, a funnel and a time")
        if self._rollout_ended(at, now):
            self.stats.canary_funnel_carrier_marks_unchanged_total += 1
            return
        state = self._state(path_group)
        if state is not None and self._rollout_ended(state.last_canary_at, now):
            state = None  # the rollout ended: the mark starts a new one
        marked = mark_carrier(state, path_group, name, reasons, at)
        if marked is None:
            self.stats.canary_funnel_carrier_marks_unchanged_total += 1
            return
        self.evidence[path_group] = marked.to_json()
        self.stats.canary_funnel_carriers_marked_total += 1

    def _apply_fold(self, fold: Fold, now: float) -> None:
        """Persist a fold the timer judged on (only on top of the state it was made on)."""
        state = self._state(fold.path_group)
        if state is not None and self._rollout_ended(state.last_canary_at, now):
            state = None  # the rollout ended: a new one starts with fresh evidence
        if state is None:
            state = GroupState(fold.path_group)
        config = self.config
        if fold.apply(state, config.window_seconds, config.verdict.psi0):
            self.evidence[fold.path_group] = state.to_json()
        else:
            self.stats.canary_folds_stale_total += 1

    def _merge(self, table: Any, agg: CanaryAggregate, arms: dict[str, WindowCounts]) -> None:
        window_range = table.window.current(agg.window_start)
        for name, counts in arms.items():
            key = ((agg.path_group, name), window_range)
            stored = table.get(key)
            merged = WindowCounts() if stored is None else WindowCounts.from_json(stored)
            merged.merge(counts)
            table[key] = merged.to_json()

    def _collect_garbage(self, partition: int, now: float) -> None:
        """Delete expired windows of this partition, at most once a window.

        Faust expires the windows it wrote itself, but not those it recovered
        from the changelog after a restart; deleting them here also writes
        the tombstones that keep the changelog from growing.
        """
        config = self.config
        if now - self._last_gc.get(partition, 0.0) < config.window_seconds:
            return
        self._last_gc[partition] = now
        for table in (self.by_stage, self.by_version):
            for key in list(table.keys()):
                (path_group, _), (start, _end) = key
                if partition_for(path_group, config.partitions) != partition:
                    continue
                if windows.is_stale(int(start), config.window_seconds, config.expires_seconds, now):
                    table.pop(key, None)
                    self.stats.canary_windows_expired_total += 1

    # -- verdict side --------------------------------------------------------

    def owned_partitions(self) -> set[int]:
        topic = self.aggregates_topic.get_topic_name()
        assignor = getattr(self.app, "assignor", None)
        if assignor is None:
            return set()
        return {tp.partition for tp in assignor.assigned_actives() if tp.topic == topic}

    def _rows(self, table: Any, owned: set[int]) -> Iterator[Row]:
        partitions = self.config.partitions
        for key, value in list(table.items()):
            try:
                (path_group, name), (start, _end) = key
                if partition_for(path_group, partitions) not in owned:
                    continue
                yield path_group, name, int(start), WindowCounts.from_json(value)
            except (TypeError, ValueError) as exc:
                log.warning("skipping an unreadable canary table entry %r: %s", key, exc)

    def _states(self, owned: set[int], now: float) -> dict[str, GroupState]:
        partitions = self.config.partitions
        out: dict[str, GroupState] = {}
        pending_limit = FOLD_PENDING_INTERVALS * self.config.interval_seconds
        stored = [str(key) for key in list(self.evidence.keys())]
        for path_group in sorted(set(stored) | set(self._sent_folds)):
            if partition_for(path_group, partitions) not in owned:
                continue
            state = self._state(path_group)
            sent = self._sent_folds.get(path_group)
            if sent is not None:
                after, sent_at = sent
                if (
                    state is not None
                    and state.folds >= after.folds
                    and state.weight >= after.weight
                ):
                    del self._sent_folds[path_group]  # applied
                elif now - sent_at <= pending_limit:
                    state = after.copy()  # not applied yet: go on from what was judged
                else:
                    del self._sent_folds[path_group]
                    self.stats.canary_folds_stale_total += 1
                    log.warning("a canary fold for %s was not applied; folding again", path_group)
            if state is None:
                continue
            if self._rollout_ended(state.last_canary_at, now):
                continue  # an ended rollout; its next window starts a new one
            reasons = self._sticky.get(state.path_group)
            if reasons is not None and not state.rolled_back:
                state.rolled_back, state.rollback_reasons = True, reasons
            out[state.path_group] = state
        return out

    def _funnel_facts(self, owned: set[int], now: float) -> dict[str, funnels.FunnelFacts]:
        """The funnels this worker owns, as their stored states judged them.

        The timer judges nothing itself: a verdict sees exactly the strata the state keeps,
        so every evaluation's strata extend the previous one's, each in the one version the
        state has (a stratum judged here on a copy could be judged again by the state with
        hits that arrived since: two factors for one stratum). Strata the stream's clock
        makes due (a funnel whose traffic stopped has no new event time; one whose
        partition lags) are judged by the agent on the timer's request, sent behind the
        hits already on the funnel's partition; the next evaluation sees them."""
        out: dict[str, funnels.FunnelFacts] = {}
        bucket = self.config.window_seconds
        clock = self._stream_clock(now)
        for name, spec in self.funnel_specs.items():
            if partition_for(FUNNEL_PREFIX + name, self.config.partitions) not in owned:
                continue
            state = self.funnel_state(name)
            if state is None or state.steps != len(spec.steps):
                continue
            if self._rollout_ended(state.last_canary_at, now):
                continue  # an ended rollout
            if name in self._funnel_sticky:
                state.rolled_back = True  # decided, its control record not applied yet
            request = None if clock is None else funnels.resolve_request(spec, state, bucket, clock)
            if request is not None:  # again every evaluation until judged: idempotent
                record = {"kind": CONTROL_FUNNEL_RESOLVE, **request.to_json()}
                self._send_to_owner(FUNNEL_PREFIX + name, orjson.dumps(record))
                self.stats.canary_funnel_resolves_sent_total += 1
            out[name] = funnels.facts(spec, state, self.config.verdict.alpha)
        return out

    def _stream_clock(self, now: float) -> float | None:
        """Event time the whole stream has reached: the end of the newest window an
        aggregate came for; the wall clock (less a window) once none came for two
        windows (traffic stopped). Under consumer lag the event time holds back.

        None while no aggregate has come since the worker started: the stream's time is
        not known yet. Taking the wall clock then (as "traffic stopped") judged a
        replayed or lagging funnel's strata before most of its hits were applied: they
        all counted as late (found by tests/integration/test_canary_funnel_workers.py on
        a slow machine: 191 late entries, 93 late conversions of 300 hits). The cost: after
        a restart into a stream that has stopped, strata the funnel's own clock has not
        judged wait for the first traffic."""
        if not self._watermark:
            return None
        bucket = self.config.window_seconds
        if now - self._last_aggregate_at > 2 * bucket:
            return now - bucket
        return max(self._watermark.values()) + bucket

    def evaluate_now(self, now: float | None = None) -> list[Verdict]:
        now = time.time() if now is None else now
        owned = self.owned_partitions()
        config = self.config
        states = self._states(owned, now)
        funnel_facts = self._funnel_facts(owned, now)
        funnel_decisions: dict[str, FunnelDecision] = {}
        judged: dict[str, GroupState] = {}
        folds: dict[str, Fold] = {}
        verdicts = evaluate(
            self._rows(self.by_stage, owned),
            self._rows(self.by_version, owned),
            config.verdict,
            window_seconds=config.window_seconds,
            expires_seconds=config.expires_seconds,
            now=now,
            states=states,
            weight_scale=len(owned) / config.partitions,
            judged_states=judged,
            funnels=funnel_facts,
            funnel_decisions=funnel_decisions,
            folds=folds,
        )
        self._send_folds(folds, judged, now)
        self.judged_states = judged
        self.funnel_decisions = funnel_decisions
        for name, decision in funnel_decisions.items():
            if decision.decision is Decision.ROLLBACK and not decision.facts.rolled_back:
                self._make_funnel_sticky(name)
            self._warn_uncarried(decision)
        self._mark_carriers(funnel_decisions, now)
        self._funnel_uncarried_warned &= set(funnel_decisions)  # ended rollouts start afresh
        for verdict in verdicts:
            changes = self.timeline.setdefault(verdict.path_group, [])
            if not changes or changes[-1][1] != verdict.decision.value:
                changes.append((now, verdict.decision.value))
                del changes[:-TIMELINE_LIMIT]
        for verdict in verdicts:
            state = states.get(verdict.path_group)
            if verdict.decision is Decision.ROLLBACK and not (state and state.rolled_back):
                self._make_sticky(verdict)
        self.verdicts = verdicts
        self.evaluated_at = now
        self.stats.canary_evaluations_total += 1
        return verdicts

    def _send_folds(
        self, folds: dict[str, Fold], judged: dict[str, GroupState], now: float
    ) -> None:
        """Hand the evaluation's folds to the agent, which persists them in the state."""
        for path_group, fold in folds.items():
            self._send_to_owner(path_group, orjson.dumps({"kind": CONTROL_FOLD, **fold.to_json()}))
            self._sent_folds[path_group] = (judged[path_group].copy(), now)
            self.stats.canary_folds_total += 1

    def _mark_carriers(self, decisions: Mapping[str, FunnelDecision], now: float) -> None:
        """Send each rolled-back funnel's rollback to the owner of every carrier not judged
        here (``FunnelDecision.marked``: its partition is another worker's, or it has no
        rollout yet), keyed by the carrier: that worker's agent makes it sticky in the
        carrier's state (``_apply_carrier_rollback``). Sent again once a window (a lost
        record, or a carrier's new rollout) and by a new owner of the funnel: a mark is
        idempotent."""
        sent = self._carrier_marks_sent
        wanted: set[tuple[str, str]] = set()
        for name, decision in decisions.items():
            if decision.decision is not Decision.ROLLBACK:
                continue
            for group in decision.marked:
                wanted.add((name, group))
                if now - sent.get((name, group), -math.inf) < self.config.window_seconds:
                    continue
                sent[(name, group)] = now
                record = {
                    "kind": CONTROL_CARRIER_ROLLBACK,
                    "path_group": group,
                    "funnel": name,
                    "reasons": list(decision.carrier_reasons),
                    "at": now,
                }
                self._send_to_owner(group, orjson.dumps(record))
                self.stats.canary_funnel_carrier_marks_sent_total += 1
        for key in set(sent) - wanted:
            del sent[key]

    def _warn_uncarried(self, decision: FunnelDecision) -> None:
        """Log once that a funnel's rollback has no path group verdict to carry it (its
        decision in ``/canary`` and the report says why); once more after it was carried
        or after a new rollout."""
        name = decision.name
        if not decision.uncarried:
            self._funnel_uncarried_warned.discard(name)
            return
        if name in self._funnel_uncarried_warned:
            return
        self._funnel_uncarried_warned.add(name)
        note = next((r for r in decision.reasons if r.startswith("not carried")), "")
        log.warning("canary funnel %s is rolled back, %s", name, note)

    def _make_funnel_sticky(self, name: str) -> None:
        if name in self._funnel_sticky:
            return
        self._funnel_sticky.add(name)
        record = {"kind": CONTROL_FUNNEL_ROLLBACK, "funnel": name}
        self._send_to_owner(FUNNEL_PREFIX + name, orjson.dumps(record))

    def _make_sticky(self, verdict: Verdict) -> None:
        """Remember a new rollback here and, through the agent, in the group's state."""
        if verdict.path_group in self._sticky:
            return
        self._sticky[verdict.path_group] = verdict.reasons
        record = {
            "kind": CONTROL_ROLLBACK,
            "path_group": verdict.path_group,
            "reasons": list(verdict.reasons),
        }
        self._send_to_owner(verdict.path_group, orjson.dumps(record))

    async def tick(self) -> None:
        """Evaluate, then publish the verdicts that changed since they were last published."""
        if getattr(self.app, "rebalancing", False) or getattr(self.app, "in_recovery", False):
            return  # tables are incomplete until recovery is done
        verdicts = self.evaluate_now()
        changed = [v for v in verdicts if self._published.get(v.path_group) != _fingerprint(v)]
        if not changed:
            return
        counts = self.stats.canary_verdicts_total
        for verdict in changed:
            counts[verdict.decision.value] = counts.get(verdict.decision.value, 0) + 1
            log.info(
                "canary verdict %s for %s: %s",
                verdict.decision.value,
                verdict.path_group,
                "; ".join(verdict.reasons),
            )
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                kafka_ok = await self._to_kafka(changed)
                store_ok = await self._to_store(changed)
        except TimeoutError:
            self.stats.count_error("timeout")
            log.warning("publishing canary verdicts timed out; retrying next time")
            return
        if kafka_ok and store_ok:  # otherwise all are sent again next time (idempotent)
            for verdict in changed:
                self._published[verdict.path_group] = _fingerprint(verdict)

    async def _to_kafka(self, verdicts: Sequence[Verdict]) -> bool:
        try:
            for verdict in verdicts:
                await self.verdict_topic.send(
                    key=verdict.path_group.encode(), value=orjson.dumps(verdict.to_json())
                )
        except Exception as exc:  # aiokafka/Faust errors vary by version
            self.stats.count_error("kafka")
            log.warning("cannot send canary verdicts to %s: %s", self.config.verdict_topic, exc)
            return False
        return True

    async def _to_store(self, verdicts: Sequence[Verdict]) -> bool:
        if self.es_service is None:
            return True
        body = b"".join(
            orjson.dumps({"index": {"_index": VERDICTS_INDEX, "_id": v.doc_id}})
            + b"\n"
            + orjson.dumps(v.to_document())
            + b"\n"
            for v in verdicts
        )
        try:
            status, response = await self.es_service.bulk(body)
        except SinkError as exc:
            self.stats.count_error("elasticsearch")
            log.warning("cannot index canary verdicts: %s", exc)
            return False
        failed = [
            item
            for entry in response.get("items") or ()
            for item in entry.values()
            if not 200 <= int(item.get("status", 500)) < 300
        ]
        if status >= 300 or response.get("errors") or failed:
            self.stats.count_error("elasticsearch")
            detail = failed[0].get("error") if failed else response.get("error")
            log.warning("the store refused canary verdicts (%s): %s", status, detail)
            return False
        return True

    def snapshot(self) -> dict[str, Any]:
        config = self.config
        return {
            "enabled": True,
            "window_seconds": config.window_seconds,
            "expires_seconds": config.expires_seconds,
            "interval_seconds": config.interval_seconds,
            "alpha": config.verdict.alpha,
            "min_samples": config.verdict.min_samples,
            "latency_threshold_ms": config.verdict.latency_threshold_ms,
            "psi0": config.verdict.psi0,
            "promote_error_margin": config.verdict.promote_error_margin,
            "warmup_windows": config.verdict.warmup_windows,
            "rollout_idle_seconds": config.rollout_idle_seconds,
            "aggregates_topic": self.aggregates_topic.get_topic_name(),
            "verdict_topic": config.verdict_topic,
            "partitions": config.partitions,
            "owned_partitions": sorted(self.owned_partitions()),
            "evaluated_at": None if self.evaluated_at is None else epoch_to_iso(self.evaluated_at),
            "verdicts": [verdict.to_json() for verdict in self.verdicts],
            "rollouts": rollout_series(self.judged_states),
            "timeline": {k: [list(e) for e in v] for k, v in self.timeline.items()},
            "funnels": [d.to_json() for _, d in sorted(self.funnel_decisions.items())],
            "stats": self.stats.as_dict(),
        }


async def drain_producer_buffer(app: Any, timeout: float = DRAIN_TIMEOUT) -> bool:
    """Wait until the producer buffer is empty; False if it is not within ``timeout``.

    Table changelog writes and ``send_soon`` records wait in that buffer.
    Faust's own flush at shutdown gives up after 0.1 s without progress (e.g.
    while the first send to a topic fetches its metadata), and what is left
    behind is lost: here a table update whose source offset is committed.
    """
    buffer = app.producer.buffer
    deadline = time.monotonic() + timeout
    while buffer.size:
        if time.monotonic() > deadline:
            log.warning("%d canary table writes not flushed at shutdown", buffer.size)
            return False
        await asyncio.sleep(0.01)
    return True


def _fingerprint(verdict: Verdict) -> Fingerprint:
    return (
        verdict.window_start,
        verdict.complete,
        verdict.decision,
        verdict.reasons,
        verdict.canary,
        verdict.stable,
        verdict.versions,
    )


# Coalesce aggregates for this long before publishing them to the table agent.
FLUSH_SECONDS = 1.0


def register_canary(app: faust.App, settings: Any, runtime: Any) -> CanaryObserver | None:
    """Declare the canary tables, agent, timer and ``/canary`` page on ``app``.

    Returns the observer the batch handler feeds, or None when
    ``canary_enabled`` is off. ``runtime.es_service`` (optional) receives the
    verdict documents. The analysis object is reachable as ``app.grayscope_canary``.
    """
    config = CanaryConfig.from_settings(settings.canary)
    if not config.enabled:
        return None
    stats = CanaryStats()
    canary = CanaryAnalysis(app, config, getattr(runtime, "es_service", None), stats)
    app.grayscope_canary = canary  # type: ignore[attr-defined]

    @app.agent(canary.aggregates_topic, name=AGENT_NAME)
    async def canary_tables(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                canary.apply(event)
            except Exception:  # a bug here must not stop the indexing worker
                log.exception("canary aggregate could not be applied")

    @app.timer(config.interval_seconds, name="grayscope-canary-verdicts")
    async def canary_verdicts() -> None:
        try:
            await canary.tick()
        except Exception:
            log.exception("canary evaluation failed")

    @app.task
    async def declare_verdict_topic() -> None:
        try:  # clusters may forbid creation; sends still work where the topic exists
            await canary.verdict_topic.maybe_declare()
        except Exception as exc:
            log.info("verdict topic %s not declared: %s", config.verdict_topic, exc)

    @app.on_before_shutdown.connect
    async def drain_canary_writes(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Sent after the consumer stopped, before Faust's own (impatient) producer flush.
        await drain_producer_buffer(app)

    @app.page("/canary")
    async def canary_page(web: Any, request: Any) -> Any:
        wanted = request.query.get("format")
        if wanted == "text":
            return Response(text=format_verdicts(canary.verdicts), content_type="text/plain")
        accept = request.headers.get("Accept", "")
        if wanted == "html" or (wanted is None and "text/html" in accept):
            return Response(text=render_html(canary.snapshot()), content_type="text/html")
        return web.json(canary.snapshot())

    observer = CanaryObserver(
        config.window_seconds,
        canary.publish_aggregates,
        stats,
        flush_interval=FLUSH_SECONDS,
        funnels=config.funnels,
        publish_funnel=canary.publish_funnel if config.funnels else None,
    )

    @app.timer(FLUSH_SECONDS, name="grayscope-canary-flush")
    async def flush_canary_aggregates() -> None:
        try:
            observer.flush()
        except Exception:
            log.exception("canary aggregates could not be published")

    return observer
