"""Conversion funnels: the spec, step matching, user progress, right-censoring, the e-process."""

from __future__ import annotations

import itertools
import math
import random
import unittest.mock
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pipeline.canary import evidence, funnel
from pipeline.canary.engine import (
    FunnelDecision,
    GroupState,
    VerdictConfig,
    assess,
    fold,
    funnel_reason_head,
    mark_carrier,
)
from pipeline.canary.funnel import FunnelSpec, FunnelState, StepSpec
from pipeline.canary.records import Decision, WindowCounts
from pipeline.config import load_settings
from pipeline.core.model import AccessRecord, Enrichment, InputMessage, KafkaCoordinates
from pipeline.core.process import Enriched, funnel_inputs
from pipeline.errors import ConfigError

BUCKET = 10
PLAY = [
    {"path_group": "/play", "method": "GET"},
    {"path_group": "/play/compile", "method": "POST", "status_class": "2xx"},
    {"path": "/play/share(/.*)?", "method": "POST"},
]


def spec(window: float = 60.0, min_drop: float = 0.0, max_users: int = 1000) -> FunnelSpec:
    text = orjson.dumps(
        [
            {
                "name": "play",
                "steps": PLAY,
                "user_key": "cookie:uid",
                "window_seconds": window,
                "min_drop": min_drop,
                "max_users": max_users,
            }
        ]
    ).decode()
    (parsed,) = funnel.parse_funnels(text)
    return parsed


# --- the spec ------------------------------------------------------------------


def test_the_spec_parses_steps_keys_and_defaults() -> None:
    parsed = spec()
    assert parsed.name == "play" and parsed.user_key == ("cookie", "uid")
    assert parsed.steps[0] == StepSpec(path_group="/play", method="GET")
    assert parsed.steps[1].status_class == 2
    assert parsed.steps[2].path == "/play/share(/.*)?"
    (other,) = funnel.parse_funnels('[{"name": "x", "steps": [{"route": "/a"}, {"route": "/b"}]}]')
    assert other.user_key == ("client_ip", "") and other.window_seconds == 600.0
    assert funnel.parse_funnels("") == ()
    (header,) = funnel.parse_funnels(
        '[{"name": "h", "user_key": "header:X_User", "steps": [{"route": "/a"}, {"route": "/b"}]}]'
    )
    assert header.user_key == ("header", "x-user")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("{}", "JSON list"),
        ('[{"name": "a b", "steps": []}]', "name must be"),
        ('[{"name": "a", "steps": [{"route": "/a"}]}]', "2 to 10 steps"),
        ('[{"name": "a", "steps": [{"method": "GET"}, {"route": "/b"}]}]', "needs a path_group"),
        ('[{"name": "a", "steps": [{"path": "("}, {"route": "/b"}]}]', "regular expression"),
        (
            '[{"name": "a", "steps": [{"route": "/a", "status_class": "2"}, {"route": "/b"}]}]',
            "1xx",
        ),
        (
            '[{"name": "a", "user_key": "ip", "steps": [{"route": "/a"}, {"route": "/b"}]}]',
            "cookie:",
        ),
        (
            '[{"name": "a", "window_seconds": 0, "steps": [{"route": "/a"}, {"route": "/b"}]}]',
            "window",
        ),
        (
            '[{"name": "a", "extra": 1, "steps": [{"route": "/a"}, {"route": "/b"}]}]',
            "unknown keys",
        ),
        (
            '[{"name": "a", "steps": [{"route": "/a"}, {"route": "/b"}]},'
            ' {"name": "a", "steps": [{"route": "/a"}, {"route": "/b"}]}]',
            "used twice",
        ),
    ],
)
def test_a_bad_spec_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        funnel.parse_funnels(text)


def test_the_setting_is_validated_at_start_up_and_reaches_the_canary_config() -> None:
    from pipeline.canary.config import CanaryConfig

    with pytest.raises(ConfigError) as info:
        load_settings(canary_funnels='[{"name": "a", "steps": []}]')
    assert info.value.setting == "GRAYSCOPE_CANARY_FUNNELS"
    settings = load_settings(
        canary_funnels=orjson.dumps([{"name": "play", "steps": PLAY}]).decode()
    )
    config = CanaryConfig.from_settings(settings.canary)
    assert [f.name for f in config.funnels] == ["play"]
    assert settings.canary.funnels.startswith("[")


def test_the_config_docs_list_the_funnels_setting() -> None:
    from pipeline.commands.config_doc import table

    assert "GRAYSCOPE_CANARY_FUNNELS" in table()


# --- matching and the core's inputs --------------------------------------------------


def test_steps_match_path_group_route_path_method_and_status_class() -> None:
    s = spec()
    assert funnel.matching_steps(s, "/play", None, "/play", "GET", 200) == [0]
    assert funnel.matching_steps(s, "/play", None, "/play", "POST", 200) == []
    assert funnel.matching_steps(s, "/play/compile", None, "/play/compile", "POST", 200) == [1]
    assert funnel.matching_steps(s, "/play/compile", None, "/play/compile", "POST", 500) == []
    assert funnel.matching_steps(s, "/play/share", None, "/play/share", "post", 201) == [2]
    assert funnel.matching_steps(s, "/play/shared", None, "/play/share", "POST", 201) == []
    (by_route,) = funnel.parse_funnels(
        '[{"name": "r", "steps": [{"route": "/blog/{slug}"}, {"route": "/dl/{file}"}]}]'
    )
    assert funnel.matching_steps(by_route, "/blog/x", "/blog/{slug}", "/blog", "GET", 200) == [0]


def test_the_core_extracts_cookie_header_and_client_address_keys() -> None:
    record = AccessRecord(
        dataset="envoy.access",
        timestamp_ns=5 * 10**9,
        method="GET",
        status=200,
        headers={"x-user": "h1"},
        cookies={"uid": "c1"},
    )
    enrichment = Enrichment(
        url_path="/play", path_group="/play", stage="canary", client_ip="1.2.3.4"
    )
    message = InputMessage(b"", None, KafkaCoordinates("t", 0, 0), 7)
    keys = (("cookie", "uid"), ("header", "x-user"), ("client_ip", ""), ("cookie", "nope"))
    (row,) = funnel_inputs([message], [Enriched(record, enrichment, b"{}")], keys)
    assert row == (
        "/play",
        None,
        "/play",
        "GET",
        200,
        5 * 10**9,
        "canary",
        ("c1", "h1", "1.2.3.4", ""),
    )


def test_hits_carry_only_the_hashed_key() -> None:
    s = spec()
    inputs = [
        ("/play", None, "/play", "GET", 200, 10**9, "canary", ("alice",)),
        ("/play", None, "/play", "GET", 200, 10**9, "stable", ("",)),
        ("/blog", None, "/blog", "GET", 200, 10**9, "stable", ("bob",)),
    ]
    hits, keyless = funnel.hits_of([s], inputs, funnel.user_keys([s]))
    assert keyless == 1
    ((user, step, arm, at),) = hits["play"]
    assert (step, arm, at) == (0, 1, 1.0)
    assert "alice" not in user and user == funnel.user_hash("play", "alice") and len(user) == 16


# --- progress, strata and right-censoring ----------------------------------------------


def walk(s: FunnelSpec, state: FunnelState, users: dict[str, dict], hits: list[funnel.Hit]) -> None:
    for hit in hits:
        progress = funnel.record_hit(s, state, users.get(hit[0]), hit, BUCKET)
        if progress is not None:
            users[hit[0]] = progress


def test_a_user_counts_once_per_step_and_only_within_the_window() -> None:
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    users: dict[str, dict] = {}
    walk(
        s,
        state,
        users,
        [
            ("u1", 0, 1, 100.0),
            ("u1", 0, 1, 101.0),  # again: once per step
            ("u1", 1, 0, 130.0),  # arm stays the one at entry
            ("u1", 1, 1, 131.0),
            ("u1", 2, 1, 200.0),  # 70 s after step 1: too late
            ("u2", 1, 0, 100.0),  # step 1 without step 0: ignored
            ("u3", 0, 0, 105.0),
        ],
    )
    # the late share is kept (it counts nowhere: step 1 is fixed at 130), not counted
    assert users["u1"] == {"a": 1, "t": [100.0, 130.0, 200.0], "c": 2}
    assert users["u2"] == {"a": None, "t": [None, 100.0, None], "c": 0}  # waits for step 0
    assert state.pending == {"0:100": [1, 1, 1, 0], "1:130": [1, 0, 0, 0]}


def test_strata_are_judged_only_once_every_user_had_the_full_window() -> None:
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    users: dict[str, dict] = {}
    walk(s, state, users, [("a", 0, 1, 100.0), ("b", 0, 0, 101.0), ("c", 0, 0, 102.0)])
    walk(s, state, users, [("b", 1, 0, 150.0)])
    # the windows of the 100..110 stratum end by 170, plus a bucket of grace: 180
    state.watermark = 179.0
    assert funnel.resolve(s, state, BUCKET) == 0
    facts = funnel.facts(s, state, 0.05)
    assert facts.steps[0].pending_canary == 1 and facts.steps[0].canary_reached == 0
    state.watermark = 180.0
    assert funnel.resolve(s, state, BUCKET) == 1
    assert state.totals[0] == [1, 0, 2, 1]
    # a conversion of a judged stratum is late: counted, not applied
    walk(s, state, users, [("c", 1, 0, 161.0)])
    assert state.late_conversions == 1
    assert state.totals[0] == [1, 0, 2, 1]


def test_state_round_trips_through_json() -> None:
    s = spec()
    state = FunnelState("play", 3)
    walk(s, state, {}, [("a", 0, 1, 100.0), ("b", 0, 0, 101.0)])
    state.watermark = 1000.0
    funnel.resolve(s, state, BUCKET)
    again = FunnelState.from_json(orjson.loads(orjson.dumps(state.to_json())))
    assert again == state
    with pytest.raises(ValueError):
        FunnelState.from_json({"v": 1, "steps": 3})


def test_users_expire_after_their_window_and_grace() -> None:
    s = spec(window=60.0)
    progress = {"a": 0, "t": [100.0, 120.0, None]}
    assert not funnel.user_expired(s, progress, 199.0, BUCKET)
    assert funnel.user_expired(s, progress, 200.0, BUCKET)


# --- the conversion e-process ------------------------------------------------------------


def run_rollout(
    s: FunnelSpec,
    rng: random.Random,
    conversion_stable: float,
    conversion_canary: float,
    strata: int,
    users_per_stratum: int,
    shares: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5),
) -> list[float]:
    """Simulated users through a two-step funnel; the log e-value after each stratum."""
    state = FunnelState(s.name, 2)
    path: list[float] = []
    for k in range(strata):
        share = shares[min(len(shares) - 1, k * len(shares) // strata)]
        row = [0, 0, 0, 0]
        for _ in range(users_per_stratum):
            canary = rng.random() < share
            p = conversion_canary if canary else conversion_stable
            converted = rng.random() < p
            offset = 0 if canary else 2
            row[offset] += 1
            row[offset + 1] += converted
        path.append(judge_stratum(s, state, k, [row]))
    return path


def judge_stratum(s: FunnelSpec, state: FunnelState, k: int, rows: list[list[int]]) -> float:
    """Stratum k's rows (one per transition) judged: the funnel's log e-value after it."""
    for step, row in enumerate(rows):
        state.pending[f"{step}:{k * BUCKET}"] = row
    state.watermark = k * BUCKET + s.window_seconds + 2 * BUCKET
    funnel.resolve(s, state, BUCKET)
    return funnel.funnel_log_e(s, state)


def test_the_e_process_keeps_its_expectation_at_most_one_under_the_null() -> None:
    """Canary converts as stable (40 %): mean of the e-value at the end <= 1 (simulated),
    and the chance that it ever crosses 1/alpha stays below alpha."""
    s = spec(window=60.0)
    rng = random.Random(7)
    finals, crossed = [], 0
    for _ in range(400):
        path = run_rollout(s, rng, 0.4, 0.4, strata=30, users_per_stratum=40)
        finals.append(math.exp(path[-1]) if path[-1] > -math.inf else 0.0)
        crossed += any(v >= math.log(20.0) for v in path)
    mean = float(np.mean(finals))
    se = float(np.std(finals)) / math.sqrt(len(finals))
    assert mean <= 1.0 + 3 * se
    assert crossed / 400 <= 0.05


def test_a_conversion_drop_is_found() -> None:
    s = spec(window=60.0)
    rng = random.Random(3)
    found = sum(
        any(v >= math.log(20.0) for v in run_rollout(s, rng, 0.4, 0.25, 30, 200)) for _ in range(20)
    )
    assert found >= 18


@settings(max_examples=60, deadline=None)
@given(
    c_reached=st.integers(1, 200),
    s_reached=st.integers(1, 200),
    c_frac=st.floats(0, 1),
    s_frac=st.floats(0, 1),
)
def test_a_canary_that_converts_at_least_as_well_never_adds_evidence(
    c_reached: int, s_reached: int, c_frac: float, s_frac: float
) -> None:
    """The one-sided test: when the canary's conversion is >= stable's, the gate keeps the
    step's e-value out (min_drop 0), and the drop estimate is never positive."""
    s = spec(window=60.0)
    state = FunnelState("play", 2)
    c_conv = round(c_frac * c_reached)
    s_conv = round(s_frac * s_reached)
    state.pending["0:0"] = [c_reached, c_conv, s_reached, s_conv]
    state.watermark = 1e6
    funnel.resolve(s, state, BUCKET)
    drop = funnel.drop_estimate(state.totals[0])
    assert drop is not None
    if drop <= 0:
        assert funnel.funnel_log_e(s, state) == -math.inf
    facts = funnel.facts(s, state, 0.05)
    step = facts.steps[0]
    assert step.drop_lower is not None and step.drop_upper is not None
    assert step.drop_lower <= drop + 1e-9 <= step.drop_upper + 2e-9


def drop_prior() -> list[tuple[float, float]]:
    """The funnel prior written out: (log omega, weight): nine tenths log-uniform over
    0.1 .. 1.0 in steps of 0.05, a tenth equally on 1.3, 1.7, 2.2 and 3.0."""
    core = range(2, 21)
    harmonic = sum(1.0 / j for j in core)
    return [(0.05 * j, 0.9 / j / harmonic) for j in core] + [
        (x, 0.025) for x in (1.3, 1.7, 2.2, 3.0)
    ]


def test_known_value_of_one_stratum_matches_scipys_noncentral_hypergeometric() -> None:
    """One stratum: 10 canary users, 2 converted; 90 stable, 45 converted. The step's e-value
    is the funnel prior's mixture (``drop_prior``) over odds ratios above 1 of Fisher's
    noncentral hypergeometric likelihood ratios of the canary's 8 non-converters among 53
    (scipy's nchypergeom_fisher)."""
    from scipy import stats

    s = spec(window=60.0)
    state = FunnelState("play", 2)
    state.pending["0:0"] = [10, 2, 90, 45]
    state.watermark = 1e6
    funnel.resolve(s, state, BUCKET)
    null = stats.hypergeom(100, 10, 53).logpmf(8)
    expected = 0.0
    for log_omega, weight in drop_prior():
        alt = stats.nchypergeom_fisher(100, 10, 53, math.exp(log_omega)).logpmf(8)
        expected += weight * math.exp(alt - null)
    assert math.exp(funnel.funnel_log_e(s, state)) == pytest.approx(expected, rel=1e-6)
    assert funnel.facts(s, state, 0.05).steps[0].e_value == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("n1", "n0", "m"), [(10, 90, 53), (3, 5, 4), (200, 50, 120)])
def test_the_stratum_likelihood_ratio_has_expectation_one_at_the_null_exactly(
    n1: int, n0: int, m: int
) -> None:
    from scipy import stats

    pmf = stats.hypergeom(n1 + n0, n1, m).pmf
    support = range(max(0, m - n0), min(n1, m) + 1)
    for offset in sorted(set(evidence.OFFSETS) | set(funnel.DROP_OFFSETS)):
        j = evidence.CENTRE + offset
        total = 0.0
        for x in support:
            loglik = funnel.fisher_loglik(x, m, n1, n0)
            assert loglik is not None
            total += pmf(x) * math.exp(loglik[j] - loglik[evidence.CENTRE])
        assert total == pytest.approx(1.0, abs=1e-9)


def test_min_drop_gates_small_drops() -> None:
    s = spec(window=60.0, min_drop=0.2)
    state = FunnelState("play", 2)
    state.pending["0:0"] = [1000, 300, 1000, 400]  # a 10 point drop, very significant
    state.watermark = 1e6
    funnel.resolve(s, state, BUCKET)
    assert funnel.funnel_log_e(s, state) == -math.inf
    assert funnel.facts(s, state, 0.05).steps[0].e_value > 1e3


def test_a_funnel_drop_rolls_back_its_steps_path_groups_and_explains_itself() -> None:
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    state.pending["0:0"] = [400, 100, 4000, 2000]
    state.pending["1:0"] = [100, 50, 2000, 1000]
    state.watermark = 1e6
    funnel.resolve(s, state, BUCKET)
    facts = funnel.facts(s, state, 0.05)
    decisions: dict = {}
    out = assess(
        {}, VerdictConfig(), window_seconds=10, funnels={"play": facts}, funnel_decisions=decisions
    )
    assert out == {}
    decision = decisions["play"]
    assert decision.decision is Decision.ROLLBACK
    assert any("canary 25.0% (100/400" in r for r in decision.reasons)
    payload = decision.to_json()
    assert payload["steps"][0]["canary"]["reached"] == 400
    assert payload["steps"][0]["drop"] == pytest.approx(0.25)
    assert payload["path_groups"] == ["/play", "/play/compile"]


def test_a_funnel_rollback_is_sticky() -> None:
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    state.rolled_back = True
    facts = funnel.facts(s, state, 0.05)
    assert facts.rolled_back
    decisions: dict = {}
    assess(
        {}, VerdictConfig(), window_seconds=10, funnels={"play": facts}, funnel_decisions=decisions
    )
    assert decisions["play"].decision is Decision.ROLLBACK
    assert "(sticky)" in decisions["play"].reasons[0]
    assert FunnelState.from_json(orjson.loads(orjson.dumps(state.to_json()))).rolled_back


def test_the_wall_clock_judges_a_funnel_whose_traffic_stopped() -> None:
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    walk(s, state, {}, [("a", 0, 1, 100.0), ("b", 0, 0, 101.0)])
    assert funnel.resolve(s, state, BUCKET) == 0  # event time stands at 101
    assert funnel.resolve(s, state, BUCKET, up_to=179.0) == 0
    assert funnel.resolve(s, state, BUCKET, up_to=180.0) == 1
    assert state.totals[0] == [1, 0, 1, 0]


def test_the_observer_buffers_hashed_hits_and_publishes_them_per_funnel() -> None:
    from pipeline.canary.observer import CanaryObserver

    published: list[tuple[str, list[funnel.Hit]]] = []
    observer = CanaryObserver(
        10,
        lambda aggregates: None,
        flush_interval=60.0,
        funnels=[spec()],
        publish_funnel=lambda name, hits, carriers, left_out: published.append((name, list(hits))),
    )
    assert observer.funnel_keys == (("cookie", "uid"),)
    inputs = [
        ("/play", None, "/play", "GET", 200, 10**9, "canary", ("alice",)),
        ("/play", None, "/play", "GET", 200, 10**9, "stable", ("",)),
    ]
    assert observer.observe_funnels(inputs) == 1
    assert published == []  # buffered until the flush
    observer.flush()
    ((name, hits),) = published
    assert name == "play" and hits[0][1:] == (0, 1, 1.0)
    assert observer.stats.canary_funnel_hits_total == 1
    assert observer.stats.canary_funnel_hits_keyless_total == 1
    # without a publisher, funnels cost nothing: no keys are extracted
    assert CanaryObserver(10, lambda aggregates: None, funnels=[spec()]).funnel_keys == ()


def test_steps_that_arrive_out_of_order_count_once_their_predecessor_arrives() -> None:
    """Access-log partitions are consumed side by side: a compile may be read before the
    visit it followed. It is kept, and counted when the visit arrives."""
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    users: dict[str, dict] = {}
    walk(s, state, users, [("u", 2, 1, 120.0), ("u", 1, 1, 110.0)])
    assert state.pending == {}
    walk(s, state, users, [("u", 0, 1, 100.0)])
    assert users["u"]["c"] == 3
    assert state.pending == {"0:100": [1, 1, 0, 0], "1:110": [1, 1, 0, 0]}  # 2 is the last
    # second resolution: a next step logged within a second before its predecessor
    walk(s, state, users, [("v", 0, 0, 300.5), ("v", 1, 0, 300.0)])
    assert users["v"]["c"] == 2
    # a stray earlier hit of a step is replaced by one that can follow
    walk(s, state, users, [("w", 1, 0, 50.0), ("w", 0, 0, 400.0), ("w", 1, 0, 410.0)])
    assert users["w"]["t"][1] == 410.0 and users["w"]["c"] == 2


def run_two_transitions(
    s: FunnelSpec, rng: random.Random, go_on: tuple[float, float], drop: float, strata: int
) -> list[float]:
    """Users through both transitions (reached step 1 only after converting at step 0);
    the funnel's log e-value after each stratum."""
    state = FunnelState(s.name, 3)
    path: list[float] = []
    for k in range(strata):
        rows = [[0, 0, 0, 0], [0, 0, 0, 0]]
        for _ in range(60):
            canary = rng.random() < 0.5
            offset = 0 if canary else 2
            for step, base in enumerate(go_on):
                rows[step][offset] += 1
                converted = rng.random() < base * ((1.0 - drop) if canary else 1.0)
                rows[step][offset + 1] += converted
                if not converted:
                    break
        path.append(judge_stratum(s, state, k, rows))
    return path


def test_two_transitions_combine_a_common_odds_ratio_and_each_step_and_stay_valid() -> None:
    s = spec(window=60.0)
    rng = random.Random(11)
    finals, crossed = [], 0
    for _ in range(300):
        path = run_two_transitions(s, rng, (0.5, 0.4), drop=0.0, strata=20)
        finals.append(math.exp(path[-1]) if path[-1] > -math.inf else 0.0)
        crossed += any(v >= math.log(20.0) for v in path)
    se = float(np.std(finals)) / math.sqrt(len(finals))
    assert float(np.mean(finals)) <= 1.0 + 3 * se
    assert crossed / 300 <= 0.05
    # A drop at both transitions: the common odds ratio carries both steps' evidence.
    state_path = run_two_transitions(s, random.Random(5), (0.5, 0.4), drop=0.3, strata=20)
    assert max(state_path) >= math.log(20.0)


def test_two_transitions_stay_valid_while_the_canary_share_ramps() -> None:
    """A/A with the canary's share ramping 1 -> 5 -> 25 -> 50 % and the conversion rates
    swinging over the strata (both arms alike): the funnel's e-value at the end has mean
    <= 1 (simulated) and crosses 1/alpha in at most alpha of the rollouts."""
    s = spec(window=60.0)
    rng = random.Random(23)
    shares = (0.01, 0.05, 0.25, 0.5)
    finals, crossed = [], 0
    for _ in range(300):
        state = FunnelState(s.name, 3)
        path: list[float] = []
        for k in range(24):
            share = shares[k * len(shares) // 24]
            swing = 1.0 + 0.3 * math.sin(k / 4.0)
            go_on = (0.5 * swing, 0.3 * swing)
            rows = [[0, 0, 0, 0], [0, 0, 0, 0]]
            for _ in range(80):
                offset = 0 if rng.random() < share else 2
                for step, rate in enumerate(go_on):
                    rows[step][offset] += 1
                    converted = rng.random() < rate
                    rows[step][offset + 1] += converted
                    if not converted:
                        break
            path.append(judge_stratum(s, state, k, rows))
        finals.append(math.exp(path[-1]) if path[-1] > -math.inf else 0.0)
        crossed += any(v >= math.log(20.0) for v in path)
    se = float(np.std(finals)) / math.sqrt(len(finals))
    assert float(np.mean(finals)) <= 1.0 + 3 * se
    assert crossed / 300 <= 0.05


def test_the_funnel_e_value_is_three_quarters_common_odds_ratio_a_quarter_steps_mean() -> None:
    """Known value (scipy): the common part is the prior's mixture over omega of the product
    of both transitions' Fisher likelihood ratios at that omega; each transition alone is
    its own mixture; the funnel's e-value is 3/4 common + 1/8 each transition."""
    from scipy import stats

    s = spec(window=60.0)
    state = FunnelState("play", 3)
    state.pending["0:0"] = [100, 30, 100, 50]
    state.pending["1:0"] = [30, 6, 50, 20]
    state.watermark = 1e6
    funnel.resolve(s, state, BUCKET)
    prior = drop_prior()

    def ratios(n1: int, n0: int, m: int, x: int) -> list[float]:
        null = stats.hypergeom(n1 + n0, n1, m).logpmf(x)
        return [
            math.exp(stats.nchypergeom_fisher(n1 + n0, n1, m, math.exp(g)).logpmf(x) - null)
            for g, _ in prior
        ]

    first = ratios(100, 100, 70 + 50, 70)  # canary non-converters 70 of 120
    second = ratios(30, 50, 24 + 30, 24)  # 24 of 54
    e0 = sum(w * r for (_, w), r in zip(prior, first, strict=True))
    e1 = sum(w * r for (_, w), r in zip(prior, second, strict=True))
    common = sum(w * a * b for (_, w), a, b in zip(prior, first, second, strict=True))
    assert math.exp(funnel.step_log_e(s, state, 0)) == pytest.approx(e0, rel=1e-6)
    assert math.exp(funnel.step_log_e(s, state, 1)) == pytest.approx(e1, rel=1e-6)
    assert math.exp(funnel.common_log_e(s, state)) == pytest.approx(common, rel=1e-6)
    expected = 0.75 * common + 0.125 * (e0 + e1)
    assert math.exp(funnel.funnel_log_e(s, state)) == pytest.approx(expected, rel=1e-6)


def null_expectations(
    margins: list[tuple[int, int, int]], min_drop: float
) -> tuple[float, float, float, float]:
    """Enumerated, not simulated: one stratum per transition with ``margins`` (each
    arm's users and the stratum's non-converters), every outcome weighted by its
    hypergeometric probability at omega = 1. The expectations of the gated funnel
    e-value, its common part and each transition's own part."""
    from scipy import stats

    s = spec(window=60.0, min_drop=min_drop)
    supports = [range(max(0, m - n0), min(n1, m) + 1) for n1, n0, m in margins]
    pmfs = [stats.hypergeom(n1 + n0, n1, m).pmf for n1, n0, m in margins]
    gated = common = first = second = 0.0
    for x0 in supports[0]:
        for x1 in supports[1]:
            p = float(pmfs[0](x0) * pmfs[1](x1))
            state = FunnelState("play", 3)
            for step, ((n1, n0, m), x) in enumerate(zip(margins, (x0, x1), strict=True)):
                state.pending[f"{step}:0"] = [n1, n1 - x, n0, n0 - (m - x)]
            state.watermark = 1e6
            funnel.resolve(s, state, BUCKET)
            gated += p * math.exp(funnel.funnel_log_e(s, state))
            summed = [a + b for a, b in zip(*state.loglik, strict=True)]
            common += p * math.exp(funnel.drop_log_e(summed))
            first += p * math.exp(funnel.drop_log_e(state.loglik[0]))
            second += p * math.exp(funnel.drop_log_e(state.loglik[1]))
    return gated, common, first, second


def test_the_funnel_e_value_has_expectation_at_most_one_under_the_null_exactly() -> None:
    """Without the gates each part (common, each transition) has expectation exactly 1;
    the gated funnel e-value at most 1."""
    gated, common, first, second = null_expectations([(6, 9, 7), (4, 8, 5)], min_drop=0.0)
    assert common == pytest.approx(1.0, abs=1e-9)
    assert first == pytest.approx(1.0, abs=1e-9)
    assert second == pytest.approx(1.0, abs=1e-9)
    assert gated <= 1.0


@settings(max_examples=25, deadline=None)
@given(
    margins=st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 11)), min_size=2, max_size=2
    ),
    min_drop=st.sampled_from([0.0, 0.1]),
)
def test_every_part_has_expectation_one_at_the_null_for_any_margins(
    margins: list[tuple[int, int, int]], min_drop: float
) -> None:
    """The enumeration above for any small margins (non-converters clipped to fit)."""
    fitted = [(n1, n0, min(m, n1 + n0)) for n1, n0, m in margins]
    gated, common, first, second = null_expectations(fitted, min_drop)
    assert common == pytest.approx(1.0, abs=1e-9)
    assert first == pytest.approx(1.0, abs=1e-9)
    assert second == pytest.approx(1.0, abs=1e-9)
    assert gated <= 1.0 + 1e-12


def test_the_common_part_counts_only_while_every_transition_shows_a_drop() -> None:
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    state.pending["0:0"] = [200, 40, 200, 100]  # a large drop at the first transition
    state.pending["1:0"] = [40, 20, 100, 40]  # the canary converts better at the second
    state.watermark = 1e6
    funnel.resolve(s, state, BUCKET)
    assert funnel.common_log_e(s, state) == -math.inf
    assert funnel.step_log_e(s, state, 1) == -math.inf
    e0 = math.exp(funnel.step_log_e(s, state, 0))
    assert e0 > 1e3
    assert math.exp(funnel.funnel_log_e(s, state)) == pytest.approx(0.125 * e0, rel=1e-9)


# --- carriers: the path groups a funnel's rollback is carried by ----------------------

ROUTES = [
    {"route": "play.page", "method": "GET"},
    {"route": "play.compile", "method": "POST"},
]


def route_spec(window: float = 60.0) -> FunnelSpec:
    text = orjson.dumps(
        [{"name": "routes", "steps": ROUTES, "user_key": "cookie:uid", "window_seconds": window}]
    ).decode()
    (parsed,) = funnel.parse_funnels(text)
    return parsed


def route_input(user: str, route: str, group: str | None, method: str = "GET") -> tuple:
    return ("/p", route, group, method, 200, 10**9, "canary", (user,))


def regressed(s: FunnelSpec, carriers: dict[str, int] | None = None) -> FunnelState:
    """A two-step funnel whose canary converts at 25 % against stable's 50 %."""
    state = FunnelState(s.name, len(s.steps))
    state.pending["0:0"] = [400, 100, 4000, 2000]
    state.watermark = 1e6
    funnel.resolve(s, state, BUCKET)
    state.add_carriers(carriers or {})
    return state


def test_hits_name_the_path_groups_of_their_requests_as_carriers() -> None:
    s = route_spec()
    carriers: dict[str, dict[str, int]] = {}
    hits, keyless = funnel.hits_of(
        [s],
        [
            route_input("a", "play.page", "/play"),
            route_input("a", "play.compile", "/play/compile", "POST"),
            route_input("b", "play.compile", "/play/compile", "POST"),
            route_input("", "play.compile", "/keyless", "POST"),  # no hit: no carrier
            route_input("c", "play.page", None),  # a hit, but no path group to carry
            route_input("d", "other", "/other"),  # no step matches
        ],
        funnel.user_keys([s]),
        carriers,
    )
    assert len(hits["routes"]) == 4 and keyless == 1
    assert carriers == {"routes": {"/play": 1, "/play/compile": 2}}


def test_the_observer_sends_the_carriers_capped_with_what_it_left_out() -> None:
    from pipeline.canary.observer import CanaryObserver

    published: list[tuple[str, int, dict[str, int], int]] = []
    observer = CanaryObserver(
        10,
        lambda aggregates: None,
        flush_interval=60.0,
        funnels=[route_spec()],
        publish_funnel=lambda name, hits, carriers, left_out: published.append(
            (name, len(hits), dict(carriers), left_out)
        ),
    )
    many = [route_input(f"u{i}", "play.page", f"/g{i:02d}") for i in range(funnel.MAX_CARRIERS)]
    observer.observe_funnels(many)
    observer.observe_funnels([route_input("x", "play.page", "/late"), *many[:1]])
    observer.flush()
    ((name, hit_count, carriers, left_out),) = published
    assert name == "routes" and hit_count == funnel.MAX_CARRIERS + 2
    assert len(carriers) == funnel.MAX_CARRIERS and "/late" not in carriers
    assert carriers["/g00"] == 2 and left_out == 1
    observer.observe_funnels([route_input("y", "play.page", "/late")])
    observer.flush()  # a new flush starts afresh (the state keeps the rollout's cap)
    assert published[-1][2:] == ({"/late": 1}, 0)


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.tuples(
            st.dictionaries(
                st.sampled_from([f"/g{i}" for i in range(2 * funnel.MAX_CARRIERS)]),
                st.integers(0, 50),
                max_size=8,
            ),
            st.integers(0, 5),
        ),
        max_size=12,
    )
)
def test_carriers_stay_bounded_count_every_request_and_survive_persistence(
    records: list[tuple[dict[str, int], int]],
) -> None:
    state = FunnelState("play", 3)
    for seen, left_out in records:
        state.add_carriers(seen, left_out)
    assert len(state.carriers) <= funnel.MAX_CARRIERS
    total = sum(sum(seen.values()) + left_out for seen, left_out in records)
    assert sum(state.carriers.values()) + state.carriers_left_out == total
    again = FunnelState.from_json(orjson.loads(orjson.dumps(state.to_json())))
    assert again == state


def test_a_state_persisted_before_carriers_reads_as_without_any() -> None:
    state = FunnelState("play", 3)
    old = state.to_json()
    del old["carriers"], old["carriers_left_out"]
    again = FunnelState.from_json(orjson.loads(orjson.dumps(old)))
    assert again.carriers == {} and again.carriers_left_out == 0
    # a state over the cap (written with a larger one): the most used kept, the rest counted
    wide = {**old, "carriers": {f"/g{i:02d}": i + 1 for i in range(funnel.MAX_CARRIERS + 2)}}
    read = FunnelState.from_json(wide)
    assert set(read.carriers) == {f"/g{i:02d}" for i in range(2, funnel.MAX_CARRIERS + 2)}
    assert read.carriers_left_out == 1 + 2


def test_the_carriers_follow_the_configured_path_groups_most_requests_first() -> None:
    s = spec()
    state = FunnelState("play", 3)
    state.add_carriers({"/play/share": 3, "/play/compile": 9, "/play/share/x": 5})
    assert funnel.facts(s, state, 0.05).path_groups == (
        "/play",
        "/play/compile",
        "/play/share/x",
        "/play/share",
    )


def group_rollout(name: str) -> GroupState:
    """A path group's rollout with identical arms: it rolls back only through a funnel."""
    state = GroupState(name)
    for w in range(3):
        canary, stable = WindowCounts(), WindowCounts()
        canary.add_requests([200] * 500, [100.0] * 500)
        stable.add_requests([200] * 500, [100.0] * 500)
        fold(state, w * 60, 60, canary, stable)
    return state


def test_a_route_only_funnel_rolls_back_the_path_groups_its_requests_fell_into() -> None:
    s = route_spec()
    facts = funnel.facts(s, regressed(s, {"/play/compile": 40, "/play": 60}), 0.05)
    assert facts.path_groups == ("/play", "/play/compile")
    states = {g: group_rollout(g) for g in ("/play", "/play/compile", "/blog")}
    decisions: dict[str, FunnelDecision] = {}
    out = assess(
        states,
        VerdictConfig(),
        window_seconds=60,
        funnels={"routes": facts},
        funnel_decisions=decisions,
    )
    for group in ("/play", "/play/compile"):
        assert out[group].decision is Decision.ROLLBACK
        assert any("funnel routes: the canary converts less" in r for r in out[group].reasons)
        assert any("canary 25.0% (100/400" in r for r in out[group].reasons)
    assert out["/blog"].decision is not Decision.ROLLBACK
    assert any("rolled back because of /play, /play/compile" in r for r in out["/blog"].reasons)
    decision = decisions["routes"]
    assert decision.decision is Decision.ROLLBACK and not decision.uncarried
    assert decision.carried_by == ("/play", "/play/compile")
    assert "carried by the path groups /play, /play/compile" in decision.reasons
    assert decision.to_json()["carried_by"] == ["/play", "/play/compile"]


def test_carriers_change_who_rolls_back_not_the_test() -> None:
    """The alpha guarantee: the evidence and which funnels e-BH names are the same with or
    without carriers; only the path groups that say rollback differ."""
    s = route_spec()
    states = {g: group_rollout(g) for g in ("/play", "/blog")}
    outcomes = []
    for carriers in ({}, {"/play": 10}):
        decisions: dict[str, FunnelDecision] = {}
        out = assess(
            states,
            VerdictConfig(),
            window_seconds=60,
            funnels={"routes": funnel.facts(s, regressed(s, carriers), 0.05)},
            funnel_decisions=decisions,
        )
        d = decisions["routes"]
        outcomes.append((d.decision, d.weight, out["/blog"].analysis.rollout_e_value))
        assert (out["/play"].decision is Decision.ROLLBACK) == bool(carriers)
    assert outcomes[0] == outcomes[1]


def test_a_sticky_funnel_carries_its_rollback_on_its_own() -> None:
    """Rolled back earlier, the funnel's evidence gone below 1/alpha (its gate closed),
    its carriers still say rollback -- one first seen after the rollback too -- without
    a sticky flag of their own."""
    s = route_spec()
    state = FunnelState("routes", 2, rolled_back=True)
    state.add_carriers({"/play/new": 1})
    facts = funnel.facts(s, state, 0.05)
    assert facts.e_value < 1.0
    states = {"/play/new": group_rollout("/play/new"), "/blog": group_rollout("/blog")}
    assert not any(st.rolled_back for st in states.values())
    decisions: dict[str, FunnelDecision] = {}
    out = assess(
        states,
        VerdictConfig(),
        window_seconds=60,
        funnels={"routes": facts},
        funnel_decisions=decisions,
    )
    assert out["/play/new"].decision is Decision.ROLLBACK
    reasons = out["/play/new"].reasons
    assert any("rolled back earlier in this rollout (sticky)" in r for r in reasons)
    assert out["/blog"].decision is not Decision.ROLLBACK
    assert decisions["routes"].decision is Decision.ROLLBACK
    assert decisions["routes"].carried_by == ("/play/new",)


def test_a_rolled_back_funnel_without_a_carrier_says_so() -> None:
    s = route_spec()
    decisions: dict[str, FunnelDecision] = {}
    out = assess(
        {"/blog": group_rollout("/blog")},
        VerdictConfig(),
        window_seconds=60,
        funnels={"routes": funnel.facts(s, regressed(s), 0.05)},
        funnel_decisions=decisions,
    )
    decision = decisions["routes"]
    assert decision.decision is Decision.ROLLBACK and decision.uncarried
    (note,) = [r for r in decision.reasons if r.startswith("not carried")]
    assert "no matched step request had a path group yet" in note
    assert out["/blog"].decision is not Decision.ROLLBACK
    assert decision.to_json()["carried_by"] == [] and decision.to_json()["marked"] == []


def test_carriers_without_a_rollout_here_are_marked_through_their_owners() -> None:
    """A carrier another worker judges (or with no rollout yet) is not left out: the
    decision names it among those its owner marks, with the reasons to give."""
    s = route_spec()
    decisions: dict[str, FunnelDecision] = {}
    out = assess(
        {"/play": group_rollout("/play"), "/blog": group_rollout("/blog")},
        VerdictConfig(),
        window_seconds=60,
        funnels={"routes": funnel.facts(s, regressed(s, {"/play": 9, "/elsewhere": 5}), 0.05)},
        funnel_decisions=decisions,
    )
    decision = decisions["routes"]
    assert decision.decision is Decision.ROLLBACK and not decision.uncarried
    assert (decision.carried_by, decision.marked) == (("/play",), ("/elsewhere",))
    (note,) = [r for r in decision.reasons if r.startswith("carried by")]
    assert note.startswith("carried by the path groups /play; and /elsewhere (no rollout judged")
    assert decision.to_json()["marked"] == ["/elsewhere"]
    assert decision.carrier_reasons[0].startswith(funnel_reason_head("routes"))
    assert decision.carrier_reasons[0].startswith("funnel routes: the canary converts less")
    # the lines the local carrier's verdict says are the ones a remote carrier is given
    assert all(r in out["/play"].reasons for r in decision.carrier_reasons)
    assert out["/blog"].decision is not Decision.ROLLBACK


def funnel_owner_decision(carriers: dict[str, int]) -> FunnelDecision:
    """The rolled-back funnel ``routes`` as its owner judges it, owning only ``/play``."""
    s = route_spec()
    decisions: dict[str, FunnelDecision] = {}
    assess(
        {"/play": group_rollout("/play")},
        VerdictConfig(),
        window_seconds=60,
        funnels={"routes": funnel.facts(s, regressed(s, carriers), 0.05)},
        funnel_decisions=decisions,
    )
    return decisions["routes"]


def test_a_carrier_another_worker_owns_says_the_funnels_rollback_there() -> None:
    """Two workers: the funnel's owner judges /play; the other owns /play/compile and
    /blog and no funnel. The mark it receives makes /play/compile roll back, sticky,
    with the funnel's reasons; /blog and the evidence (what is tested) stay the same."""
    decision = funnel_owner_decision({"/play": 9, "/play/compile": 4})
    assert decision.marked == ("/play/compile",)
    states = {g: group_rollout(g) for g in ("/play/compile", "/blog")}
    before = assess(states, VerdictConfig(), window_seconds=60)
    assert before["/play/compile"].decision is not Decision.ROLLBACK
    marked = mark_carrier(
        states["/play/compile"], "/play/compile", "routes", decision.carrier_reasons, 1e6
    )
    assert marked is not None and marked.rolled_back
    states["/play/compile"] = GroupState.from_json(orjson.loads(orjson.dumps(marked.to_json())))
    after = assess(states, VerdictConfig(), window_seconds=60)
    verdict = after["/play/compile"]
    assert verdict.decision is Decision.ROLLBACK
    assert verdict.analysis.rule == "rollback: rollout evidence reached 1/alpha (sticky)"
    assert any(r.startswith("funnel routes: the canary converts less") for r in verdict.reasons)
    assert any("canary 25.0% (100/400" in r for r in verdict.reasons)
    assert after["/blog"].decision is before["/blog"].decision
    for group in states:
        a, b = before[group].analysis, after[group].analysis
        assert (a.e_value, a.rollout_e_value, a.weight) == (b.e_value, b.rollout_e_value, b.weight)


def test_a_mark_before_any_rollout_starts_one_rolled_back_that_windows_fold_onto() -> None:
    """A carrier first seen after the rollback, or whose windows were not folded yet:
    its rollout starts rolled back at the owner's decision time, and stays so."""
    decision = funnel_owner_decision({"/play": 9, "/play/new": 1})
    state = mark_carrier(None, "/play/new", "routes", decision.carrier_reasons, 1234.5)
    assert state is not None
    assert (state.rolled_back, state.last_canary_at, state.first_window) == (True, 1234.5, -1)
    assert state.rollback_reasons == decision.carrier_reasons
    stored = GroupState.from_json(orjson.loads(orjson.dumps(state.to_json())))
    assert stored == state  # the changelog keeps it
    canary, stable = WindowCounts(), WindowCounts()
    canary.add_requests([200] * 500, [100.0] * 500)
    stable.add_requests([200] * 500, [100.0] * 500)
    fold(stored, 1200, 60, canary, stable)
    out = assess({"/play/new": stored}, VerdictConfig(), window_seconds=60)
    assert out["/play/new"].decision is Decision.ROLLBACK
    assert mark_carrier(stored, "/play/new", "routes", decision.carrier_reasons, 9e9) is None


def test_a_mark_must_name_its_funnel_first() -> None:
    with pytest.raises(ValueError, match="must give its reasons first"):
        mark_carrier(None, "/play", "routes", ["funnel other: the canary converts less"], 1.0)
    with pytest.raises(ValueError):
        mark_carrier(None, "/play", "routes", [], 1.0)


def mark_lines(name: str, n: int) -> tuple[str, ...]:
    return (f"{funnel_reason_head(name)}the canary converts less ({n})", f"step {n}")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), max_size=12),
    st.booleans(),
    st.booleans(),
)
def test_marks_are_idempotent_and_change_only_the_sticky_flag_and_reasons(
    marks: list[tuple[str, int]], has_state: bool, own_rollback: bool
) -> None:
    """Any sequence of marks -- duplicates, replays, several funnels -- leaves one
    funnel's reasons once per funnel, in the order first seen, a rollback of the group's
    own kept; a mark seen before changes nothing; the evidence is never touched."""
    base: GroupState | None = None
    if has_state:
        base = group_rollout("/g")
        base.rolled_back, base.rollback_reasons = own_rollback, ("own",) if own_rollback else ()
    state = base.copy() if base is not None else None
    for name, n in marks:
        new = mark_carrier(state, "/g", name, mark_lines(name, n), 100.0)
        if new is None:
            assert state is not None
            assert any(r.startswith(funnel_reason_head(name)) for r in state.rollback_reasons)
        else:
            state = new
    firsts: dict[str, int] = {}
    for name, n in marks:
        firsts.setdefault(name, n)
    if not marks:
        assert state == base
        return
    assert state is not None and state.rolled_back
    expected = ("own",) if has_state and own_rollback else ()
    for name, n in firsts.items():
        expected += mark_lines(name, n)
    assert state.rollback_reasons == expected
    for name, n in marks:  # replayed: nothing changes
        assert mark_carrier(state, "/g", name, mark_lines(name, n + 1), 200.0) is None
    if base is not None:
        untouched = state.copy()
        untouched.rolled_back, untouched.rollback_reasons = base.rolled_back, base.rollback_reasons
        assert untouched == base


# --- hits of one stratum spread over records (partition lag, a backfill) ---------------


def apply_record(
    s: FunnelSpec, state: FunnelState, users: dict[str, dict], hits: list[funnel.Hit]
) -> None:
    """One funnel record as the agent applies it (``funnel.apply_record``): every hit in
    event-time order, then the strata whose users have all had their window judged (on
    the funnel's event time); the users' progress written once that returned."""
    users.update(funnel.apply_record(s, state, users.get, hits, BUCKET))


def test_a_late_entry_never_reopens_a_judged_stratum() -> None:
    """One partition lags the others by more than the window plus two buckets: the
    stratum 0:100 is judged from the fast partition's hits, then the lagging one brings
    more entries of it and conversions of users it judged as non-converters. They are
    late: they neither re-open the stratum nor count anyone twice, and nothing raises."""
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    users: dict[str, dict] = {}
    # the fast partition: a, f (canary) and b, c (stable) enter, b goes on
    apply_record(s, state, users, [("a", 0, 1, 100.0), ("f", 0, 1, 101.0)])
    apply_record(s, state, users, [("b", 0, 0, 102.0), ("c", 0, 0, 103.0)])
    apply_record(s, state, users, [("b", 1, 0, 150.0), ("x", 0, 0, 200.0)])
    # 200 - 60 - 2 * 10 = 120 >= 100: the stratum is judged
    assert "0:100" not in state.pending and state.totals[0] == [2, 0, 2, 1]
    judged = [list(row) for row in state.totals]
    loglik = [list(row) for row in state.loglik]
    # the lagging partition: entries of 0:100 (d canary, e and g stable) and a, f going on
    apply_record(
        s,
        state,
        users,
        [
            ("d", 0, 1, 104.0),
            ("e", 0, 0, 105.0),
            ("g", 0, 0, 106.0),
            ("a", 1, 1, 130.0),
            ("f", 1, 1, 131.0),
        ],
    )
    assert "0:100" not in state.pending  # never re-opened
    assert state.totals[0] == judged[0]  # a and f stay the non-converters they were judged
    assert state.loglik[0] == loglik[0]  # the stratum's evidence counts once
    assert state.late_conversions == 2
    assert state.late_entries == 3
    # a and f reached step 1 (at 130 and 131, a stratum not judged yet): counted there
    assert state.pending["1:130"] == [2, 0, 0, 0]


def test_the_judged_horizon_survives_persistence_and_old_states_read_with_their_own() -> None:
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    users: dict[str, dict] = {}
    apply_record(s, state, users, [("a", 0, 1, 100.0), ("b", 0, 0, 101.0), ("x", 0, 0, 200.0)])
    assert state.judged_through == 200.0 - 60.0 - 2 * BUCKET
    stored = orjson.loads(orjson.dumps(state.to_json()))
    assert FunnelState.from_json(stored) == state
    # a state persisted before the horizon was kept: its last resolve judged up to the
    # horizon of its watermark, and that is what it reads as (no late entries yet)
    del stored["judged_through"], stored["late_entries"]
    old = FunnelState.from_json(stored)
    assert old.judged_through is None and old.late_entries == 0
    apply_record(s, old, users, [("c", 0, 0, 104.0), ("a", 1, 1, 130.0)])
    assert old.late_entries == 1 and old.late_conversions == 1
    assert old.totals == state.totals and "0:100" not in old.pending
    # a fresh state has judged nothing: its first record's hits all count
    fresh = FunnelState("play", 3)
    assert FunnelState.from_json(orjson.loads(orjson.dumps(fresh.to_json()))) == fresh
    walk(s, fresh, {}, [("a", 0, 1, 100.0)])
    assert fresh.pending == {"0:100": [1, 0, 0, 0]} and fresh.judged_through == -math.inf
    assert FunnelState.from_json(orjson.loads(orjson.dumps(fresh.to_json()))) == fresh


def test_progress_of_another_shape_of_the_funnel_starts_the_user_afresh() -> None:
    """Users keep their progress when the funnel's steps change (a new configuration):
    progress that does not fit the funnel is a new user, not an exception."""
    s = spec(window=60.0)
    state = FunnelState("play", 3)
    users: dict[str, dict] = {"a": {"a": 1, "t": [100.0, 120.0], "c": 2}, "b": {"t": 7}}
    apply_record(s, state, users, [("a", 1, 1, 130.0), ("a", 0, 1, 125.0), ("b", 0, 0, 126.0)])
    assert users["a"] == {"a": 1, "t": [125.0, 130.0, None], "c": 2}
    assert state.pending == {"0:120": [1, 1, 1, 0], "1:130": [1, 0, 0, 0]}


def test_users_a_previous_rollout_counted_start_afresh_in_the_next() -> None:
    """A new rollout starts a fresh state while users keep their progress: a conversion
    of a user the old state counted must not land in the new state's row of the same
    stratum (it holds other users' entries). The user starts afresh: their next step
    waits for a step 0 in this rollout."""
    s = spec(window=60.0)
    users: dict[str, dict] = {}
    old = FunnelState("play", 3, rollout="r1")
    apply_record(s, old, users, [("a", 0, 1, 100.0), ("b", 0, 0, 101.0)])
    assert users["a"] == {"a": 1, "t": [100.0, None, None], "c": 1, "r": "r1"}
    state = FunnelState("play", 3, rollout="r2")
    apply_record(s, state, users, [("c", 0, 1, 102.0), ("d", 0, 0, 103.0), ("e", 0, 0, 104.0)])
    apply_record(s, state, users, [("a", 1, 1, 120.0), ("b", 1, 0, 121.0), ("c", 1, 1, 122.0)])
    assert state.pending["0:100"] == [1, 1, 2, 0] and state.late_conversions == 0
    assert users["a"] == {"a": None, "t": [None, 120.0, None], "c": 0, "r": "r2"}
    apply_record(s, state, users, [("z", 0, 0, 300.0)])
    assert state.totals[0] == [1, 1, 2, 0]
    assert FunnelState.from_json(orjson.loads(orjson.dumps(state.to_json()))).rollout == "r2"


def test_a_row_never_takes_more_conversions_than_entries() -> None:
    """The last guard of ``fisher_loglik``'s margins (a state lost while its users kept
    their progress): a conversion whose entry is not in the row counts as late."""
    s = spec(window=60.0)
    users = {"a": {"a": 1, "t": [100.0, None, None], "c": 1}}
    state = FunnelState("play", 3)
    apply_record(s, state, users, [("a", 1, 1, 110.0)])
    assert state.late_conversions == 1
    assert state.pending == {"1:110": [1, 0, 0, 0]}  # the step it reached counts


# Users walking the three steps: arm, entry time, the gaps to steps 1 and 2 (None: they
# stop; a gap beyond the 60 s window or a second before the step: it does not follow).
walkers = st.lists(
    st.tuples(
        st.sampled_from([0, 1]),
        st.integers(0, 200),
        st.one_of(st.none(), st.integers(-2, 70)),
        st.one_of(st.none(), st.integers(-2, 70)),
    ),
    min_size=1,
    max_size=14,
)


class PopSpy(dict):
    """``FunnelState.pending`` that remembers every row ``resolve`` judged (pops)."""

    judged: list[tuple[str, list[int]]]

    def pop(self, key, *default):  # type: ignore[no-untyped-def, override]
        if key in self:
            self.judged.append((key, list(self[key])))
        return super().pop(key, *default)


def walker_times(entered: float, gap1: int | None, gap2: int | None) -> list[float]:
    """When a ``walkers`` user hits the funnel's steps: entry, then each gap it goes on."""
    times = [entered]
    if gap1 is not None:
        times.append(entered + gap1)
        if gap2 is not None:
            times.append(entered + gap1 + gap2)
    return times


@settings(max_examples=400, deadline=None)
@given(
    users=walkers,
    delays=st.lists(st.one_of(st.just(0), st.integers(0, 400)), min_size=42, max_size=42),
    duplicates=st.lists(st.booleans(), min_size=42, max_size=42),
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=12),
    persist=st.sampled_from(["no", "json", "json before the horizon was kept"]),
    no_delays=st.booleans(),
)
def test_any_interleaving_of_a_funnels_hits_over_records_counts_each_user_once(
    users: list[tuple[int, int, int | None, int | None]],
    delays: list[int],
    duplicates: list[bool],
    sizes: list[int],
    persist: str,
    no_delays: bool,
) -> None:
    """The same hits, delayed arbitrarily (lagging partitions, a backfill, replays) and
    cut into records anyhow: nothing raises, no stratum is judged twice, every row holds
    at most its entries' conversions and at most the users who entered it, and every
    counted entry and conversion is in a table, pending or counted late -- once. Without
    delays nothing is late."""
    s = spec(window=60.0)
    base = 1_800_000_000.0
    hits: list[tuple[float, funnel.Hit]] = []
    for index, (arm, entry, gap1, gap2) in enumerate(users):
        user = f"u{index}"
        for step, t in enumerate(walker_times(base + entry, gap1, gap2)):
            i = 3 * index + step
            hit = (user, step, arm if step == 0 else 1 - arm if duplicates[i] else arm, t)
            arrival = t + (0 if no_delays else delays[i])
            hits.append((arrival, hit))
            if duplicates[i] and not no_delays:  # a replayed record brings it again
                hits.append((arrival + delays[-1 - i], hit))
    hits.sort(key=lambda item: item[0])
    records: list[list[funnel.Hit]] = []
    cursor, turn = 0, 0
    while cursor < len(hits):
        size = sizes[turn % len(sizes)]
        records.append([hit for _, hit in hits[cursor : cursor + size]])
        cursor, turn = cursor + size, turn + 1

    state = FunnelState("play", 3)
    progress: dict[str, dict] = {}
    judged: list[tuple[str, list[int]]] = []
    for record in records:
        spy = PopSpy(state.pending)
        spy.judged = judged
        state.pending = spy
        progress.update(funnel.apply_record(s, state, progress.get, record, BUCKET))
        state.pending = dict(state.pending)
        if persist != "no":
            stored = orjson.loads(orjson.dumps(state.to_json()))
            if persist != "json":
                del stored["judged_through"], stored["late_entries"]
                late_entries = state.late_entries
            again = FunnelState.from_json(stored)
            if persist != "json":
                assert funnel.judged_horizon(s, again, BUCKET) == state.judged_through
                again.late_entries = late_entries  # the old state had no such counter
            state = again
        assert all(
            int(key.split(":")[1]) > (state.judged_through or -math.inf) for key in state.pending
        )
    # the end of the stream: every stratum judged
    spy = PopSpy(state.pending)
    spy.judged = judged
    state.pending = spy
    funnel.resolve(s, state, BUCKET, up_to=base + 10_000.0)
    assert not state.pending

    keys = [key for key, _ in judged]
    assert len(keys) == len(set(keys)), "a stratum was judged twice"
    # who entered each stratum and who converted there, per arm, by the users' progress
    entered: dict[str, list[int]] = {}
    entries = conversions = 0
    for p in progress.values():
        counted, times, arm = p["c"], p["t"], p["a"]
        for k in range(min(counted, 2)):  # steps 0 and 1 have a next step
            truth = entered.setdefault(f"{k}:{int(times[k] // BUCKET) * BUCKET}", [0, 0, 0, 0])
            converted = counted > k + 1
            offset = 0 if arm == 1 else 2
            truth[offset] += 1
            truth[offset + 1] += converted
            entries += 1
            conversions += converted
    for key, row in judged:
        c_reached, c_conv, s_reached, s_conv = row
        assert 0 <= c_conv <= c_reached and 0 <= s_conv <= s_reached
        truth = entered[key]
        assert c_reached <= truth[0] and s_reached <= truth[2], "a user counted twice"
        assert c_conv <= truth[1] and s_conv <= truth[3], "a conversion counted twice"
    totals = [[0, 0, 0, 0], [0, 0, 0, 0]]
    for key, row in judged:
        step = int(key.split(":")[0])
        totals[step] = [a + b for a, b in zip(totals[step], row, strict=True)]
    assert state.totals == totals
    assert sum(t[0] + t[2] for t in totals) + state.late_entries == entries
    assert sum(t[1] + t[3] for t in totals) + state.late_conversions == conversions
    event(f"late entries: {state.late_entries > 0}, late conversions: {state.late_conversions > 0}")
    if no_delays:
        assert state.late_entries == state.late_conversions == 0
        assert totals == [
            [sum(v[i] for k, v in entered.items() if k.startswith(f"{step}:")) for i in range(4)]
            for step in (0, 1)
        ]


def funnel_owner(s: FunnelSpec) -> Any:
    """The agent's funnel side (``CanaryAnalysis.apply_funnel``) on plain dicts for tables."""
    from agents.canary import CanaryAnalysis
    from pipeline.canary.config import CanaryConfig
    from pipeline.canary.counters import CanaryStats

    owner = object.__new__(CanaryAnalysis)
    owner.config = CanaryConfig(window_seconds=BUCKET, funnels=(s,))
    owner.stats = CanaryStats()
    owner.funnel_specs = {s.name: s}
    owner.funnel_users = {}
    owner.funnel_states = {}
    owner._funnel_gc = {}
    return owner


def funnel_record(*hits: tuple[str, int, int, float]) -> dict[str, Any]:
    base = 1_800_000_000.0
    rows = [[user, step, arm, base + at] for user, step, arm, at in hits]
    return {"kind": "funnel", "funnel": "play", "hits": rows}


def test_the_owner_counts_a_lagging_partitions_hits_as_late() -> None:
    s = spec(window=60.0)
    owner = funnel_owner(s)
    owner.apply_funnel(funnel_record(("a", 0, 1, 100.0), ("f", 0, 1, 101.0)))
    owner.apply_funnel(funnel_record(("b", 0, 0, 102.0), ("c", 0, 0, 103.0)))
    owner.apply_funnel(funnel_record(("b", 1, 0, 150.0), ("x", 0, 0, 200.0)))
    owner.apply_funnel(
        funnel_record(
            ("d", 0, 1, 104.0),
            ("e", 0, 0, 105.0),
            ("g", 0, 0, 106.0),
            ("a", 1, 1, 130.0),
            ("f", 1, 1, 131.0),
        )
    )
    state = owner.funnel_state("play")
    assert state.totals[0] == [2, 0, 2, 1] and state.rollout
    assert owner.stats.canary_funnel_late_entries_total == 3
    assert owner.stats.canary_funnel_hits_applied_total == 11  # late or not, every hit
    # a and f were past their window and grace when the stratum was judged: retention
    # deleted them, so their step 1 waits for a step 0 instead of counting as late
    assert owner.stats.canary_funnel_late_conversions_total == state.late_conversions == 0
    assert owner.funnel_users["play/a"]["t"] == [None, 1_800_000_130.0, None]
    assert owner.stats.canary_aggregates_invalid_total == 0
    assert all(p["r"] == state.rollout for p in owner.funnel_users.values())
    assert funnel.facts(s, state, 0.05).to_json()["late_entries"] == 3


def test_a_funnel_record_is_applied_whole_or_not_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    s = spec(window=60.0)
    owner = funnel_owner(s)
    owner.apply_funnel(funnel_record(("a", 0, 1, 100.0), ("b", 0, 0, 101.0)))
    users, states = dict(owner.funnel_users), dict(owner.funnel_states)

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("judging failed")

    monkeypatch.setattr(funnel, "resolve", broken)
    with pytest.raises(RuntimeError):
        owner.apply_funnel(funnel_record(("a", 1, 1, 120.0), ("c", 0, 0, 121.0)))
    assert owner.funnel_users == users and owner.funnel_states == states  # no progress written
    monkeypatch.undo()
    owner.apply_funnel(funnel_record(("a", 1, 1, 120.0), ("c", 0, 0, 121.0)))
    assert owner.funnel_state("play").pending["0:1800000100"] == [1, 1, 1, 0]
    # malformed hits are counted and skipped, never applied
    owner.apply_funnel(
        {"kind": "funnel", "funnel": "play", "hits": [["z", -1, 0, 1.0], ["z", 0, 7, 1.0]]}
    )
    assert owner.stats.canary_aggregates_invalid_total == 2


# --- what a verdict judged is what the state keeps ---------------------------------


def timer_owner(s: FunnelSpec) -> Any:
    """``funnel_owner`` with the verdict timer's side: the stream clock (aggregates of
    other partitions) and the control records it sends (kept in ``owner.sent``, in order,
    not delivered: the test delivers them to ``apply`` as the partition would)."""
    owner = funnel_owner(s)
    owner._watermark = {}
    owner._last_aggregate_at = 0.0
    owner._funnel_sticky = set()
    owner.sent = []
    owner._send_to_owner = lambda key, value: owner.sent.append(value)
    return owner


def evaluate_funnels(owner: Any, clock: float) -> funnel.FunnelFacts | None:
    """One evaluation of the timer at stream clock ``clock`` (aggregates of other
    partitions reached it; epoch seconds): the funnel as the verdict sees it."""
    owner._watermark = {"/elsewhere": int(clock) - BUCKET}
    owner._last_aggregate_at = clock
    owned = set(range(owner.config.partitions))
    return owner._funnel_facts(owned, clock).get("play")


def test_no_stream_clock_before_an_aggregate_then_the_wall_clock_once_traffic_stops() -> None:
    """Until an aggregate has come since the worker started, the stream's time is not
    known: the timer asks nothing, however old the funnel's strata (a replay, a lagging
    partition: the rest of their hits may still come). Once aggregates came and then
    stopped for two windows, the wall clock makes the strata due."""
    s = spec(window=60.0)
    owner = timer_owner(s)
    base = 1_800_000_000.0
    owner.apply_funnel(funnel_record(("a", 0, 1, 100.0), ("b", 0, 0, 101.0)))
    owned = set(range(owner.config.partitions))
    later = base + 600.0  # within the rollout (idle for 1,800 s ends it)
    owner._funnel_facts(owned, later)
    assert owner.sent == []  # no aggregate yet: nothing is due by the stream's clock
    owner._watermark = {"/elsewhere": int(base + 120.0)}
    owner._last_aggregate_at = base + 125.0
    owner._funnel_facts(owned, base + 130.0)
    assert owner.sent == []  # the stream's clock (base + 130) leaves the stratum open
    owner._funnel_facts(owned, later)  # no aggregate for minutes: traffic stopped
    (request,) = [orjson.loads(v) for v in owner.sent]
    assert request["kind"] == "funnel_resolve" and request["up_to"] == later - BUCKET


def deliver(owner: Any, value: bytes, now: float) -> None:
    """A record of the funnel's partition reaching the agent."""
    event = type("Event", (), {"value": value})()
    owner.apply(event, now=now)


def judged_rows(facts: funnel.FunnelFacts) -> list[list[int]]:
    return [
        [s.canary_reached, s.canary_converted, s.stable_reached, s.stable_converted]
        for s in facts.steps
    ]


def test_a_verdict_sees_a_stratum_only_as_the_state_keeps_it() -> None:
    """The funnel's partition lags the stream: the timer evaluates while the stratum
    0:100 has only the fast partition's hits, the lagging partition's entries of it arrive
    after. The verdicts and the stored state must judge that stratum in one version (the
    first verdict's table is the one the state keeps, or that verdict does not judge it
    yet): two versions of one stratum are two factors for it in the e-process."""
    s = spec(window=60.0)
    owner = timer_owner(s)
    base = 1_800_000_000.0
    owner.apply_funnel(funnel_record(("a", 0, 1, 100.0), ("b", 0, 0, 102.0)))
    # the stream has reached 200 elsewhere: by its clock 0:100 is due (200 - 60 - 20)
    first = evaluate_funnels(owner, base + 200.0)
    assert first is not None
    # the lagging partition: more entries of 0:100, then the funnel's own clock moves on
    lagging = funnel_record(("d", 0, 1, 104.0), ("e", 0, 0, 105.0), ("x", 0, 0, 200.0))
    deliver(owner, orjson.dumps(lagging), base + 201.0)
    for value in list(owner.sent):  # the timer's control records, behind the hits
        deliver(owner, value, base + 202.0)
    second = evaluate_funnels(owner, base + 210.0)
    assert second is not None
    kept = owner.funnel_state("play").totals
    assert kept[0] == [2, 0, 2, 0]  # the lagging entries were in before it was judged
    assert owner.funnel_state("play").late_entries == 0
    for view in (first, second):  # nothing judged yet, or judged as the state keeps it
        assert judged_rows(view)[0] in ([0, 0, 0, 0], kept[0])
    assert judged_rows(second) == kept


@settings(max_examples=300, deadline=None)
@given(
    users=walkers,
    delays=st.lists(st.one_of(st.just(0), st.integers(0, 300)), min_size=42, max_size=42),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    ops=st.lists(
        st.tuples(st.sampled_from(["produce", "deliver", "evaluate"]), st.integers(0, 200)),
        min_size=1,
        max_size=60,
    ),
    fates=st.lists(st.sampled_from(["delivered", "lost", "duplicated"]), min_size=1, max_size=9),
)
def test_every_evaluation_sees_the_strata_the_state_keeps_nested_and_each_once(
    users: list[tuple[int, int, int | None, int | None]],
    delays: list[int],
    sizes: list[int],
    ops: list[tuple[str, int]],
    fates: list[str],
) -> None:
    """Hits (delayed anyhow: lagging input partitions), timer evaluations at any stream
    clock and deliveries of the funnel's partition, interleaved arbitrarily, the timer's
    control records lost or duplicated: each stratum is judged once, in one version --
    every evaluation's judged strata are judged so in the stored state -- and each
    evaluation's strata extend the previous one's. The verdict's counts are the sums of
    the strata it judged."""
    s = spec(window=60.0)
    base = 1_800_000_000.0
    produced: list[tuple[float, funnel.Hit]] = []
    for index, (arm, entry, gap1, gap2) in enumerate(users):
        for step, t in enumerate(walker_times(base + entry, gap1, gap2)):
            produced.append((t + delays[3 * index + step], (f"u{index}", step, arm, t)))
    produced.sort(key=lambda item: item[0])
    records: list[list[funnel.Hit]] = []
    cursor = 0
    while cursor < len(produced):
        size = sizes[len(records) % len(sizes)]
        records.append([hit for _, hit in produced[cursor : cursor + size]])
        cursor += size

    owner = timer_owner(s)
    partition: list[bytes] = []  # the funnel's partition: records not delivered yet
    # strata the stored states judged, in order, as ((rollout, stratum), row): a funnel
    # without canary users has no live rollout, and each record starts a new one
    stored: list[tuple[tuple[str, str], list[int]]] = []
    views: list[tuple[str | None, dict]] = []  # each evaluation's rollout and judged strata
    context = {"timer": False, "provisional": {}}
    real_resolve = funnel.resolve

    def spy(spec: FunnelSpec, state: FunnelState, bucket: int, up_to: float | None = None) -> int:
        before = {key: list(row) for key, row in state.pending.items()}
        done = real_resolve(spec, state, bucket, up_to)
        judged = [
            ((state.rollout, key), row) for key, row in before.items() if key not in state.pending
        ]
        if context["timer"]:
            context["provisional"].update(judged)
        else:
            stored.extend(judged)
        return done

    clock = base
    fate = 0

    def evaluate(at: float) -> None:
        nonlocal fate
        sent = len(owner.sent)
        context["timer"], context["provisional"] = True, {}
        facts = evaluate_funnels(owner, at)
        context["timer"] = False
        view: dict[tuple[str, str], list[int]] = {}
        rollout = None
        if facts is not None:  # else an ended rollout (no canary users): nothing seen
            rollout = owner.funnel_state("play").rollout
            view = {key: row for key, row in stored if key[0] == rollout}
            view.update(context["provisional"])
            sums = [[0, 0, 0, 0], [0, 0, 0, 0]]
            for (_, key), row in view.items():
                step = int(key.split(":")[0])
                sums[step] = [a + b for a, b in zip(sums[step], row, strict=True)]
            assert judged_rows(facts) == sums
        views.append((rollout, view))
        for value in owner.sent[sent:]:
            what = fates[fate % len(fates)]
            fate += 1
            partition.extend([] if what == "lost" else [value] * (2 if what == "duplicated" else 1))

    def deliver_next(count: int) -> None:
        for _ in range(min(count, len(partition))):
            deliver(owner, partition.pop(0), clock)

    with unittest.mock.patch.object(funnel, "resolve", spy):
        for op, value in ops:
            if op == "produce" and records:
                rows = [[u, k, a, t] for u, k, a, t in records.pop(0)]
                partition.append(orjson.dumps({"kind": "funnel", "funnel": "play", "hits": rows}))
                clock = max([clock] + [row[3] for row in rows])
            elif op == "deliver":
                deliver_next(value % 4 + 1)
            elif op == "evaluate":
                clock = min(clock + value, base + 1_500.0)  # within the rollout's idle time
                evaluate(clock)
        for record in records:  # the rest of the stream, then time enough for all of it
            rows = [[u, k, a, t] for u, k, a, t in record]
            partition.append(orjson.dumps({"kind": "funnel", "funnel": "play", "hits": rows}))
        deliver_next(len(partition))
        clock = base + 1_500.0  # past every stratum's horizon, within the idle time
        fates = ["delivered"]
        evaluate(clock)
        deliver_next(len(partition))
        evaluate(clock)

    keys = [key for key, _ in stored]
    assert len(keys) == len(set(keys)), "the state judged a stratum twice"
    final = dict(stored)
    state = owner.funnel_state("play")
    if state is not None and state.last_canary_at:  # a live rollout: all of it judged
        assert not state.pending, "a stratum was never judged"
    for (rollout, earlier), (next_rollout, later) in itertools.pairwise(views):
        if rollout != next_rollout:
            continue  # not evaluated (no live rollout), or a new rollout starts afresh
        for key, row in earlier.items():
            assert later.get(key) == row, "an evaluation's stratum changed or vanished"
    for _, view in views:
        for key, row in view.items():
            assert final.get(key) == row, "a verdict judged a stratum the state keeps otherwise"
    event(f"late entries: {bool(state and state.late_entries)}")


def test_the_timer_asks_the_agent_to_judge_a_quiet_funnel_once_and_idempotently() -> None:
    """A funnel whose traffic stopped: the stream's clock makes its stratum due, the timer
    asks the agent (``funnel_resolve``) and the next evaluation sees it judged. The
    request is idempotent, and one made for another rollout's state changes nothing."""
    s = spec(window=60.0)
    owner = timer_owner(s)
    base = 1_800_000_000.0
    owner.apply_funnel(funnel_record(("a", 0, 1, 100.0), ("b", 0, 0, 101.0)))
    assert evaluate_funnels(owner, base + 179.0) is not None
    assert owner.sent == []  # 179 - 60 - 20 < 100: nothing due, nothing asked
    first = evaluate_funnels(owner, base + 180.0)
    assert first is not None and judged_rows(first)[0] == [0, 0, 0, 0]  # asked, not judged
    (request,) = [orjson.loads(v) for v in owner.sent]
    state = owner.funnel_state("play")
    assert request == {
        "kind": "funnel_resolve",
        "funnel": "play",
        "rollout": state.rollout,
        "up_to": base + 180.0,
    }
    assert owner.stats.canary_funnel_resolves_sent_total == 1
    deliver(owner, owner.sent[0], base + 181.0)
    second = evaluate_funnels(owner, base + 190.0)
    assert second is not None and judged_rows(second)[0] == [1, 0, 1, 0]
    judged = owner.funnel_state("play")
    assert judged.judged_through == base + 100.0 and len(owner.sent) == 1  # nothing more due
    assert judged.history == [[base + 180.0, funnel.funnel_log_e(s, judged)]]
    stored = dict(owner.funnel_states)
    deliver(owner, owner.sent[0], base + 191.0)  # a duplicate, or a replay
    assert owner.funnel_states == stored
    assert owner.stats.canary_funnel_resolves_unchanged_total == 1
    other = {**request, "rollout": "another", "up_to": base + 400.0}
    deliver(owner, orjson.dumps(other), base + 192.0)  # made for another rollout's state
    assert owner.funnel_states == stored
    assert owner.stats.canary_funnel_resolves_unchanged_total == 2
    # a malformed request is counted as invalid, like any unreadable record
    deliver(owner, orjson.dumps({"kind": "funnel_resolve", "funnel": "play"}), base + 193.0)
    deliver(owner, orjson.dumps({**request, "up_to": None}), base + 193.0)
    assert owner.stats.canary_aggregates_invalid_total == 2
    assert owner.funnel_states == stored


def test_a_resolve_request_judges_a_state_persisted_before_requests_existed() -> None:
    """A state written before the judged horizon and the rollout's name were kept reads
    as judged up to its own horizon with the rollout "": the timer's request names that
    rollout, and the agent judges it as any other."""
    s = spec(window=60.0)
    owner = timer_owner(s)
    base = 1_800_000_000.0
    old = FunnelState("play", 3)
    walk(s, old, {}, [("a", 0, 1, base + 100.0), ("b", 0, 0, base + 101.0)])
    stored = old.to_json()
    del stored["judged_through"], stored["late_entries"], stored["rollout"]
    owner.funnel_states["play"] = stored
    assert evaluate_funnels(owner, base + 180.0) is not None
    (request,) = [orjson.loads(v) for v in owner.sent]
    assert request["rollout"] == ""
    deliver(owner, owner.sent[0], base + 181.0)
    judged = owner.funnel_state("play")
    assert judged.totals[0] == [1, 0, 1, 0] and judged.judged_through == base + 100.0
    assert owner.stats.canary_funnel_resolves_unchanged_total == 0
