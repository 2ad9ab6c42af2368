"""The rollout state on the broker: windows folded into the changelogged evidence table,
a rollback made sticky through the control record, both recovered after a restart."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

from agents.canary import CanaryAnalysis
from pipeline.canary import Decision
from pipeline.canary.engine import GroupState
from tests.integration.conftest import unique_name
from tests.integration.test_canary import (
    by_path_group,
    canary_app,
    canary_settings,
    requests,
    wait_for,
)


def fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def state_of(canary: CanaryAnalysis, path_group: str) -> GroupState | None:
    stored = canary.evidence.get(path_group)
    return None if stored is None else GroupState.from_json(stored)


async def test_rollback_is_folded_sticky_and_recovered(
    bootstrap: str, faust_settings: dict[str, Any], tmp_path: Path
) -> None:
    app_id = unique_name("rollout")
    settings = canary_settings(
        app_id, canary_window=1, canary_expires=30, canary_interval=0.2, canary_min_samples=20
    )
    now = time.time()
    bad = []
    for ago in (5, 4, 3, 2):  # four windows, each folded as soon as the timer sees it
        bad += requests("/pay", "canary", 100, errors=20, at=now - ago, version="v2")
        bad += requests("/pay", "stable", 400, errors=4, at=now - ago)

    async with canary_app(bootstrap, app_id, settings, faust_settings, tmp_path) as (
        canary,
        observer,
        _,
    ):
        observer.observe_batch(bad)
        await wait_for(
            lambda: (
                (s := state_of(canary, "/pay")) is not None
                and s.rolled_back
                and s.canary.requests == 400
            ),
            "the folded windows and the sticky rollback in the evidence table",
        )
        folded = state_of(canary, "/pay")
        assert folded is not None and folded.windows == 4
        assert (folded.canary.requests, folded.canary.errors_5xx) == (400, 80)
        assert any("significantly higher" in r for r in folded.rollback_reasons)

    # A new process: the state comes back from its changelog; healthy traffic now
    # does not undo the rollback.
    async with canary_app(bootstrap, app_id, settings, faust_settings, tmp_path) as (
        canary,
        observer,
        url,
    ):
        await wait_for(lambda: state_of(canary, "/pay") is not None, "the recovered state")
        recovered = state_of(canary, "/pay")
        assert recovered is not None and recovered.rolled_back
        assert recovered.error_loglik == folded.error_loglik
        healthy_at = time.time()
        observer.observe_batch(
            requests("/pay", "canary", 100, at=healthy_at, version="v2")
            + requests("/pay", "stable", 400, at=healthy_at)
        )
        await wait_for(lambda: "/pay" in by_path_group(canary.verdicts), "a verdict for /pay")
        verdict = by_path_group(canary.verdicts)["/pay"]
        page = await asyncio.to_thread(fetch_text, f"{url}/canary?format=html")
    assert page.startswith("<!DOCTYPE html>") and 'data-path-group="/pay"' in page
    assert 'class="chart evidence"' in page and "<polyline" in page
    assert verdict.decision is Decision.ROLLBACK
    assert verdict.analysis is not None and verdict.analysis.rule.startswith("rollback")
