"""Synthetic funnel traffic: users keyed by client address walk /play -> /play/compile ->
/play/share with realistic drop-offs; the demo configures the funnel that judges them."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest

from pipeline.canary import funnel
from pipeline.commands.produce import add_produce_arguments, run_produce
from pipeline.config import enrich_context, load_settings
from pipeline.core.model import InputMessage, KafkaCoordinates
from pipeline.core.process import Enriched, funnel_inputs, process
from pipeline.dev.demo.command import add_demo_arguments, run_demo
from pipeline.dev.demo.services import worker_env
from pipeline.dev.synth import FUNNEL_SPEC, FunnelTraffic, generate
from pipeline.errors import ConfigError

N = 30_000


def judged(drop: float, seed: int = 3) -> funnel.FunnelState:
    """The synthetic traffic through the core and the funnel, every stratum judged."""
    (spec,) = funnel.parse_funnels(orjson.dumps(list(FUNNEL_SPEC)).decode())
    ctx = enrich_context(load_settings(geoip_city_db=""))
    raws = list(generate(N, seed, canary_share=0.5, funnel=FunnelTraffic(canary_drop=drop)))
    messages = [InputMessage(raw, None, KafkaCoordinates("t", 0, i)) for i, raw in enumerate(raws)]
    results = [process(raw, ctx) for raw in raws]
    assert all(isinstance(r, Enriched) for r in results)
    keys = funnel.user_keys([spec])
    hits, keyless = funnel.hits_of([spec], funnel_inputs(messages, results, keys), keys)
    assert keyless == 0  # every request has a client address
    state = funnel.FunnelState(spec.name, len(spec.steps))
    users: dict[str, dict] = {}
    for hit in sorted(hits[spec.name], key=lambda h: h[3]):
        progress = funnel.record_hit(spec, state, users.get(hit[0]), hit, 10)
        if progress is not None:
            users[hit[0]] = progress
    state.watermark += 1_000
    funnel.resolve(spec, state, 10)
    return state


def test_the_default_stream_is_unchanged_by_the_funnel_option() -> None:
    assert list(generate(200, 5)) == list(generate(200, 5, funnel=None))
    with_funnel = list(generate(200, 5, funnel=FunnelTraffic()))
    assert with_funnel != list(generate(200, 5))
    assert with_funnel == list(generate(200, 5, funnel=FunnelTraffic()))  # deterministic


def test_users_walk_the_funnel_with_realistic_drop_offs() -> None:
    state = judged(0.0)
    (c0, k0, s0, j0), (c1, k1, s1, j1) = state.totals
    # about 4 % of 30,000 requests start a walk; a walker already in the funnel
    # (within their window and grace) does not enter again
    assert 600 < c0 + s0 < 1300
    # 60 % compile, 35 % of those share (a little more: shares by the same address count)
    assert 0.5 < (k0 + j0) / (c0 + s0) < 0.7
    assert 0.25 < (k1 + j1) / (c1 + s1) < 0.5
    assert (
        funnel.funnel_log_e(
            funnel.parse_funnels(orjson.dumps(list(FUNNEL_SPEC)).decode())[0], state
        )
        < 3.0
    )


def test_a_canary_conversion_drop_is_visible_and_significant() -> None:
    (spec,) = funnel.parse_funnels(orjson.dumps(list(FUNNEL_SPEC)).decode())
    state = judged(0.5)
    facts = funnel.facts(spec, state, 0.05)
    assert facts.steps[0].drop is not None and facts.steps[0].drop > 0.2
    assert facts.e_value > 1e3


def test_the_demo_worker_gets_the_funnel_unless_one_is_configured(tmp_path: Path) -> None:
    def env(**values: str) -> dict[str, str]:
        return worker_env(
            load_settings(**values),
            bootstrap="b",
            topic="t",
            store_url="s",
            otlp_endpoint="o",
            web_port=1,
            data_dir=tmp_path,
        )

    configured = env()["GRAYSCOPE_CANARY_FUNNELS"]
    assert [f.name for f in funnel.parse_funnels(configured)] == ["playground"]
    own = '[{"name": "mine", "steps": [{"route": "/a"}, {"route": "/b"}]}]'
    assert env(canary_funnels=own)["GRAYSCOPE_CANARY_FUNNELS"] == own


def test_produce_and_demo_flags() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_produce_arguments(parser)
    args = parser.parse_args(["--synthetic", "--funnel", "--conversion-drop", "0.3"])
    assert args.funnel and args.conversion_drop == 0.3
    for argv in (
        ["--synthetic", "--conversion-drop", "1.5"],
        ["--file", "x.log", "--funnel"],
    ):
        with pytest.raises(ConfigError):
            run_produce(parser.parse_args(argv), load_settings())
    demo = argparse.ArgumentParser()
    add_demo_arguments(demo)
    assert demo.parse_args([]).conversion_drop == 0.0
    with pytest.raises(ConfigError, match="--conversion-drop"):
        run_demo(demo.parse_args(["--conversion-drop", "2"]), load_settings())


def test_walks_keep_their_client_and_arm() -> None:
    ctx = enrich_context(load_settings(geoip_city_db=""))
    steps: dict[str, list[tuple[str, str]]] = {}
    for raw in itertools.islice(
        generate(None, 9, canary_share=0.5, funnel=FunnelTraffic()), 20_000
    ):
        result = process(raw, ctx)
        assert isinstance(result, Enriched)
        group = result.enrichment.path_group
        if group in ("/play", "/play/compile"):
            steps.setdefault(result.enrichment.client_ip or "", []).append(
                (group, result.enrichment.stage)
            )
    walked = [v for v in steps.values() if any(g == "/play/compile" for g, _ in v)]
    assert len(walked) > 50
    for visits in walked:
        assert len({stage for _, stage in visits}) == 1, visits
