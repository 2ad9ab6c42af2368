"""Conversion funnels on the real broker: hits through the observer and the aggregates
topic, users' progress and the funnel's state in changelogged tables, recovered by a new
process of the app, retention, and the funnel's part in the verdict."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from pipeline.canary import funnel
from pipeline.canary.records import Decision
from pipeline.core.process import FunnelInput
from tests.integration.test_canary import (
    by_path_group,
    canary_app,
    canary_settings,
    partition_count,
    previous_window,
    requests,
    wait_for,
)

NS = 1_000_000_000
FUNNELS = orjson.dumps(
    [
        {
            "name": "play",
            "steps": [
                {"path_group": "/play", "method": "GET"},
                {"path_group": "/play/compile", "method": "POST"},
                {"path_group": "/play/share", "method": "POST"},
            ],
            "user_key": "cookie:uid",
            "window_seconds": 30,
        }
    ]
).decode()
STEPS = (("/play", "GET"), ("/play/compile", "POST"), ("/play/share", "POST"))


def hit(user: str, step: int, stage: str, at: float) -> FunnelInput:
    group, method = STEPS[step]
    return (group, None, group, method, 200, int(at * NS), stage, (user,))


def entries_and_conversions(t0: float) -> list[FunnelInput]:
    """40 canary users of whom 10 compile, 40 stable users of whom 30 compile."""
    out: list[FunnelInput] = []
    for arm, converting in (("canary", 10), ("stable", 30)):
        for i in range(40):
            user = f"{arm}-{i}"
            out.append(hit(user, 0, arm, t0 + i * 0.1))
            if i < converting:
                out.append(hit(user, 1, arm, t0 + 5 + i * 0.1))
    return out


def snapshot(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/canary", timeout=10) as response:
        return dict(orjson.loads(response.read()))


async def test_funnel_state_is_recovered_after_a_restart_and_judged(
    bootstrap: str, faust_settings: dict[str, Any], tmp_path: Path
) -> None:
    app_id = "canary-funnel-" + str(time.time_ns())
    settings = canary_settings(app_id, canary_partitions=2, canary_funnels=FUNNELS)
    # whole windows, long enough ago for t0's strata, recent enough that the new user's
    # stratum is not yet due on the wall clock (the timer has the agent judge due strata)
    t0 = (time.time() // 60 - 4) * 60
    later = t0 + 200  # a new user: moves the funnel's event-time clock past t0's strata

    async with canary_app(bootstrap, app_id, settings, faust_settings, tmp_path / "a") as (
        canary,
        observer,
        url,
    ):
        assert observer.funnel_keys == (("cookie", "uid"),)
        observer.observe_funnels(
            [*entries_and_conversions(t0), hit("late-user", 0, "canary", later)]
        )
        await wait_for(
            lambda: (s := canary.funnel_state("play")) is not None and s.totals[0][0] == 40,
            "the funnel's first judged stratum",
        )
        first = canary.funnel_state("play")
        assert first is not None
        first.rolled_back = False  # set by the control record once the timer decides
        assert first.totals[0] == [40, 10, 40, 30]  # canary reached/converted, stable
        assert first.totals[1] == [10, 0, 30, 0]  # those who compiled; none shared
        # the path groups its hits' requests fell into: the carriers of its rollback
        assert (first.carriers, first.carriers_left_out) == ({"/play": 81, "/play/compile": 40}, 0)
        # Retention: the 80 users of t0 are past their window and grace; the new one stays.
        keys = [str(k) for k in list(canary.funnel_users)]
        assert keys == [f"play/{funnel.user_hash('play', 'late-user')}"]
        assert canary.stats.canary_funnel_users_expired_total == 80
        assert all("late-user" not in k and "canary-" not in k for k in keys)
        await wait_for(lambda: "play" in canary.funnel_decisions, "a funnel decision")
        decision = canary.funnel_decisions["play"]
        assert decision.decision is Decision.ROLLBACK
        assert any("canary 25.0% (10/40" in r for r in decision.reasons)
        page = await asyncio.to_thread(snapshot, url)
        (shown,) = page["funnels"]
        assert shown["name"] == "play" and shown["decision"] == "rollback"
        await wait_for(
            lambda: (s := canary.funnel_state("play")) is not None and s.rolled_back,
            "the sticky funnel rollback in the table",
        )
        assert shown["steps"][0]["canary"] == {
            "reached": 40,
            "converted": 10,
            "pending": 1,  # the new user: inside their window, not yet a non-converter
            "conversion": 0.25,
        }

    for table in ("canary-funnels", "canary-funnel-users"):
        assert await partition_count(bootstrap, f"{app_id}-{table}-changelog") == 2

    # A new process with a new data directory: both tables come back from their changelogs.
    async with canary_app(bootstrap, app_id, settings, faust_settings, tmp_path / "b") as (
        canary,
        observer,
        _,
    ):
        await wait_for(lambda: canary.funnel_state("play") is not None, "the recovered funnel")
        recovered = canary.funnel_state("play")
        assert recovered is not None
        assert recovered.rolled_back  # the first process made its rollback sticky
        recovered.rolled_back = False
        assert recovered == first  # the carriers came back too
        await wait_for(lambda: len(canary.funnel_users) == 1, "the recovered user")
        # The recovered user goes on to compile: counted against their recovered entry.
        observer.observe_funnels([hit("late-user", 1, "canary", later + 10)])
        await wait_for(
            lambda: (
                (s := canary.funnel_state("play")) is not None
                and sum(row[1] for row in s.pending.values()) == 1
            ),
            "the recovered user's conversion",
        )
        state = canary.funnel_state("play")
        assert state is not None
        stratum = f"0:{int(later // 60) * 60}"
        assert state.pending[stratum] == [1, 1, 0, 0]
        assert state.totals[0] == [40, 10, 40, 30]
        assert canary.stats.canary_aggregates_invalid_total == 0


ROUTE_FUNNELS = orjson.dumps(
    [
        {
            "name": "routes",
            "steps": [
                {"route": "play.page", "method": "GET"},
                {"route": "play.compile", "method": "POST"},
            ],
            "user_key": "cookie:uid",
            "window_seconds": 30,
        }
    ]
).decode()


async def test_a_route_only_funnel_rolls_back_the_path_groups_its_requests_fell_into(
    bootstrap: str, faust_settings: dict[str, Any], tmp_path: Path
) -> None:
    """No step names a path group: the funnel's regression rolls back the path groups its
    matched requests were classified into, and only those."""
    app_id = "canary-funnel-routes-" + str(time.time_ns())
    settings = canary_settings(app_id, canary_funnels=ROUTE_FUNNELS)
    t0 = (time.time() // 60 - 4) * 60
    start = previous_window()
    inputs: list[FunnelInput] = []
    for arm, converting in (("canary", 10), ("stable", 30)):
        for i in range(40):
            user = (f"{arm}-{i}",)
            at = int((t0 + i * 0.1) * NS)
            inputs.append(("/play", "play.page", "/play", "GET", 200, at, arm, user))
            if i < converting:
                at += 5 * NS
                compile_ = ("/api/compile", "play.compile", "/api/compile", "POST", 200, at)
                inputs.append((*compile_, arm, user))

    async with canary_app(bootstrap, app_id, settings, faust_settings, tmp_path) as (
        canary,
        observer,
        url,
    ):
        # The path groups' own traffic: identical arms, nothing to roll back on their own.
        observer.observe_batch(
            [
                *(
                    e
                    for g in ("/play", "/api/compile", "/blog")
                    for e in requests(g, "canary", 100, at=start)
                ),
                *(
                    e
                    for g in ("/play", "/api/compile", "/blog")
                    for e in requests(g, "stable", 100, at=start)
                ),
            ]
        )
        observer.observe_funnels(inputs)
        observer.flush()

        def decisions() -> dict[str, Decision]:
            return {g: v.decision for g, v in by_path_group(canary.verdicts).items()}

        await wait_for(
            lambda: decisions().get("/api/compile") is Decision.ROLLBACK,
            "the rollback carried by the compile requests' path group",
        )
        verdicts = by_path_group(canary.verdicts)
        assert verdicts["/play"].decision is Decision.ROLLBACK
        assert verdicts["/blog"].decision is not Decision.ROLLBACK
        assert any(
            "funnel routes: the canary converts less" in r for r in verdicts["/api/compile"].reasons
        )
        state = canary.funnel_state("routes")
        assert state is not None
        assert state.carriers == {"/play": 80, "/api/compile": 40}
        page = await asyncio.to_thread(snapshot, url)
        (shown,) = page["funnels"]
        assert shown["decision"] == "rollback"
        assert shown["carried_by"] == ["/play", "/api/compile"]
