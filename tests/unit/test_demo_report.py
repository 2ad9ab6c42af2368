"""The demo's text output (tables, sections, progress lines), the worker's environment,
the metrics parser and the extra-sections hook."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.canary.records import Decision
from pipeline.config import load_settings
from pipeline.dev.demo.extras import (
    DemoContext,
    extra_sections,
    safe_extra_sections,
    verdicts_settled,
)
from pipeline.dev.demo.progress import Counts, drain_line, drained, traffic_line
from pipeline.dev.demo.report import (
    WORSE_MARK,
    Endpoints,
    Section,
    endpoints_section,
    headline,
    jaeger_search_path,
    jaeger_ui_path,
    millis,
    path_group_section,
    percent,
    render_report,
    render_table,
    span_section,
    summary_sections,
)
from pipeline.dev.demo.services import settings_env, worker_env
from pipeline.dev.demo.stages import plan_stages
from pipeline.dev.demo.summary import parse_summary
from pipeline.dev.synth import PATH_RULES
from tests.unit.test_canary_format import T0, verdict
from tests.unit.test_demo_summary import CANNED, WINDOWS

# --- tables -------------------------------------------------------------------------------


def test_table_pads_columns_and_aligns() -> None:
    lines = render_table(
        ["name", "count"], [["a", "1"], ["longer", "1,000", "<< note"]], [False, True]
    )
    assert lines == [
        "name    count",
        "------  -----",
        "a           1",
        "longer  1,000  << note",
    ]


def test_number_formats() -> None:
    assert percent(0.3123) == "31.2%"
    assert percent(None) == "-"
    assert millis(640.4) == "640 ms"
    assert millis(8.14) == "8.1 ms"
    assert millis(1234.0) == "1,234 ms"
    assert millis(None) == "-"


# --- sections from the canned response -------------------------------------------------------


def row_of(section: Section, key: str) -> str:
    return next(line for line in section.lines if line.split()[0] == key)


def test_path_group_table_flags_the_regressed_group() -> None:
    section = path_group_section(parse_summary(CANNED, WINDOWS))
    assert section.title == "By path group (gray.path_group x gray.stage)"
    assert section.lines[0].split() == [
        "path", "group", "stable", "req", "5xx", "p95", "canary", "req", "5xx", "p95",
    ]  # fmt: skip
    share = row_of(section, "/play/share")
    assert re.findall(r"[\d.]+%", share) == ["0.6%", "35.0%"]
    assert "120 ms" in share and "640 ms" in share
    assert share.endswith(WORSE_MARK)
    assert WORSE_MARK not in row_of(section, "/godoc/pkg")


def test_all_sections_render() -> None:
    summary = parse_summary(CANNED, WINDOWS)
    sections = summary_sections(summary, "checkout7a", [])
    titles = [s.title for s in sections]
    assert titles[:5] == [
        "By rollout stage (@timestamp range x gray.stage)",
        "By path group (gray.path_group x gray.stage)",
        "By version (gray.version)",
        "By country (client.geo.country_iso_code, top 10)",
        "Busiest gray ids (gray.id)",
    ]
    rollout, _, versions, countries, gray_ids, spans = sections
    fifty = row_of(rollout, "50%")
    assert "5,000" in fifty and "50.0%" in fifty and "4.3%" in fifty  # canary 5xx 108/2500
    assert "canary, stable" in row_of(versions, "(none)")
    assert "United States" in row_of(countries, "US")
    assert row_of(countries, "US").endswith("25.0%")
    assert row_of(gray_ids, "checkout7a").split()[:3] == ["checkout7a", "canary", "800"]
    assert spans.lines == ["no spans found"]


def test_headline() -> None:
    lines = headline(parse_summary(CANNED, WINDOWS), produced=10_002, dead_lettered=2, spans=9_990)
    assert lines == [
        "10,000 requests indexed from 24 countries "
        "(10,002 produced, 2 dead-lettered, 9,990 spans received)",
        "overall: 5xx 1.5%, p95 250 ms",
    ]
    jaeger = headline(parse_summary(CANNED, WINDOWS), 10_002, 2, 9_990, "exported to Jaeger")
    assert jaeger[0].endswith("(10,002 produced, 2 dead-lettered, 9,990 spans exported to Jaeger)")


def span(trace: str, status: int, start: int, **attrs: Any) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "name": "GET /play/share/{id}",
        "start_ns": start,
        "end_ns": start + 512_000_000,
        "status_code": "STATUS_CODE_ERROR" if status >= 500 else "STATUS_CODE_UNSET",
        "attributes": {
            "http.response.status_code": status,
            "gray.stage": "canary",
            "gray.version": "1.23",
            "geo.country.iso_code": "DE",
            "geo.locality.name": "Berlin",
            **attrs,
        },
        "resource": {"service.name": "godoc"},
    }


def test_span_section_lists_errors_first_then_the_latest() -> None:
    spans = [span("a" * 32, 200, 1), span("b" * 32, 503, 2), span("c" * 32, 200, 3)]
    section = span_section("exp00001", spans)
    assert section.title.startswith("Spans for gray.id=exp00001")
    assert "Tags gray.id=exp00001" in section.title
    assert section.lines[0] == "3 spans in 3 traces, 1 with status ERROR; showing 3:"
    rows = section.lines[3:]
    assert [r[:1] for r in rows] == ["b", "c", "a"]
    assert "503" in rows[0] and "512 ms" in rows[0] and "Berlin" in rows[0]


def test_span_section_from_jaeger_names_jaeger_and_its_search() -> None:
    spans = [span("a" * 32, 200, 1), span("b" * 32, 503, 2)]
    section = span_section("exp00001", spans, jaeger_version="1.75.0")
    assert section.title == ("Spans for gray.id=exp00001 (found by Jaeger 1.75.0's tag search)")
    assert "stand-in" not in section.title
    assert section.lines[0] == (
        "GET /api/traces?service=godoc&tags=%7B%22gray.id%22%3A%22exp00001%22%7D"
    )
    assert section.lines[1] == "2 spans in 2 traces, 1 with status ERROR; showing 2:"
    assert span_section("exp00001", [], jaeger_version="1.75.0").lines == ["no spans found"]


def test_jaeger_paths() -> None:
    assert jaeger_search_path("go.dev", "g 1") == (
        "/api/traces?service=go.dev&tags=%7B%22gray.id%22%3A%22g%201%22%7D"
    )
    assert jaeger_ui_path("go.dev", "g1") == (
        "/search?service=go.dev&tags=%7B%22gray.id%22%3A%22g1%22%7D"
    )


def test_span_section_caps_the_rows_and_handles_no_gray_id() -> None:
    spans = [span(f"{i:032x}", 200, i) for i in range(20)]
    assert len(span_section("x", spans).lines) == 1 + 2 + 8
    assert "nothing to search" in span_section(None, []).lines[0]


def test_report_layout() -> None:
    text = render_report(["intro"], [Section("T", ["a", "b"])], rule_width=40)
    lines = text.splitlines()
    assert lines[0].startswith("== grayscope demo: drill-down (grayscope-access-*) ")
    assert lines[1:] == ["intro", "", "T", "  a", "  b", "=" * 40]


def test_endpoints_section_has_urls_and_curl_examples() -> None:
    endpoints = Endpoints(
        bootstrap="127.0.0.1:9092",
        topic="access-logs",
        dlq_topic="access-logs-dlq",
        store_url="http://127.0.0.1:9200",
        otlp_grpc="http://127.0.0.1:4317",
        otlp_http="http://127.0.0.1:4318/v1/traces",
        worker_url="http://127.0.0.1:6066",
        log_dir="/tmp/demo",
    )
    text = "\n".join(endpoints_section(endpoints, "exp00001").lines)
    assert "--kafka-brokers 127.0.0.1:9092 --input-topics access-logs" in text
    assert "curl -s 'http://127.0.0.1:9200/grayscope-access-*/_count'" in text
    assert "curl -s 'http://127.0.0.1:4318/api/spans?tag=gray.id:exp00001'" in text
    assert "http://127.0.0.1:6066/metrics" in text and "http://127.0.0.1:6066/healthz" in text
    assert "/tmp/demo/{broker,store,worker}.log" in text
    assert "stand-in for Jaeger" in text
    # The example aggregation is valid JSON.
    query = re.search(r"-d '(\{.*\})'", text)
    assert query is not None and orjson.loads(query.group(1))["size"] == 0


# --- progress ---------------------------------------------------------------------------------


def test_traffic_line() -> None:
    stages = plan_stages(60)
    line = traffic_line(stages[1], 3, 23.4, 60, 23_000, 1001.0, Counts(22_500, 22_000, 22_500, 0))
    assert line == (
        "stage 2/3 canary 5%  0:23/1:00  produced 23,000 (1,001/s)  indexed 22,500  spans 22,000"
    )
    assert "indexed ?" in traffic_line(None, 3, 0, 60, 0, 0, Counts())


def test_drain_line_and_condition() -> None:
    counts = Counts(indexed=900, spans=850, consumed=950, dead_lettered=1)
    assert drain_line(1000, counts, 3.0) == (
        "draining  consumed 950/1,000  indexed 900  spans 850  0:03"
    )
    assert not drained(1000, counts)
    assert drained(950, counts)
    assert not drained(0, Counts())


# --- the worker's environment and metrics -------------------------------------------------------


def test_settings_env_round_trips_through_settings() -> None:
    settings = load_settings(
        input_topics="a,b", es_verify_certs=False, es_mode="index", es_password="pw"
    )
    env = settings_env(settings)
    assert env["GRAYSCOPE_INPUT_TOPICS"] == "a,b"
    assert env["GRAYSCOPE_ES_VERIFY_CERTS"] == "false"
    assert env["GRAYSCOPE_ES_MODE"] == "index"
    assert env["GRAYSCOPE_ES_PASSWORD"] == "pw"
    assert len(env) == len(type(settings).model_fields)
    again = load_settings(**{k.removeprefix("GRAYSCOPE_").lower(): v for k, v in env.items()})
    assert again == settings


def test_worker_env_points_at_the_embedded_services(tmp_path: Path) -> None:
    settings = load_settings(
        kafka_security_protocol="SASL_SSL", es_api_key="key", log_level="debug"
    )
    env = worker_env(
        settings,
        bootstrap="127.0.0.1:1234",
        topic="access-logs",
        store_url="http://127.0.0.1:9200",
        otlp_endpoint="http://127.0.0.1:4317",
        web_port=6067,
        data_dir=tmp_path,
    )
    assert env["GRAYSCOPE_KAFKA_BROKERS"] == "127.0.0.1:1234"
    assert env["GRAYSCOPE_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert env["GRAYSCOPE_KAFKA_SESSION_TIMEOUT"] == "2"
    assert env["GRAYSCOPE_ES_MODE"] == "index"
    assert env["GRAYSCOPE_ES_API_KEY"] == ""
    assert env["GRAYSCOPE_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"
    assert env["GRAYSCOPE_WEB_PORT"] == "6067"
    assert env["GRAYSCOPE_LOG_LEVEL"] == "debug"  # the user's own settings carry over
    assert orjson.loads(env["GRAYSCOPE_PATH_RULES"]) == list(PATH_RULES)
    load_settings(**{k.removeprefix("GRAYSCOPE_").lower(): v for k, v in env.items()})


def test_worker_env_keeps_the_users_path_rules(tmp_path: Path) -> None:
    rules = '[{"match": "^/x", "group": "/x"}]'
    env = worker_env(
        load_settings(path_rules=rules),
        bootstrap="b",
        topic="t",
        store_url="s",
        otlp_endpoint="o",
        web_port=1,
        data_dir=tmp_path,
    )
    assert env["GRAYSCOPE_PATH_RULES"] == rules


def test_endpoints_section_points_at_jaeger_when_the_spans_go_there() -> None:
    endpoints = Endpoints(
        bootstrap="127.0.0.1:9092",
        topic="access-logs",
        dlq_topic="access-logs-dlq",
        store_url="http://127.0.0.1:9200",
        otlp_grpc="http://127.0.0.1:41001",
        otlp_http="http://127.0.0.1:41002/v1/traces",
        worker_url="http://127.0.0.1:6066",
        log_dir="/tmp/demo",
        jaeger_url="http://127.0.0.1:41004",
        span_service="godoc",
    )
    text = "\n".join(endpoints_section(endpoints, "exp00001").lines)
    tags = "tags=%7B%22gray.id%22%3A%22exp00001%22%7D"
    assert f"http://127.0.0.1:41004/search?service=godoc&{tags}" in text
    assert f"curl -s 'http://127.0.0.1:41004/api/traces?service=godoc&{tags}'" in text
    assert "Jaeger OTLP         gRPC http://127.0.0.1:41001" in text
    assert "OTLP receiver" not in text and "/api/spans" not in text
    assert "jaeger/jaeger" in text


# --- the extra-sections hook ---------------------------------------------------------------


def context() -> DemoContext:
    return DemoContext(
        store_request=lambda method, path, body: {},
        index_pattern="grayscope-access-*",
        windows=WINDOWS,
        regression=None,
        stable_version="1.22",
        canary_version="1.23",
        summary=parse_summary(CANNED, WINDOWS),
        spans=list,
    )


def test_extra_sections_are_empty_for_now() -> None:
    assert extra_sections(context()) == []
    assert safe_extra_sections(context()) == []


def test_a_failing_extra_section_is_reported_not_raised() -> None:
    def broken(ctx: DemoContext) -> list[Section]:
        raise RuntimeError("boom")

    sections = safe_extra_sections(context(), broken)
    assert sections == [Section("Extra section failed", ["RuntimeError: boom"])]


@pytest.mark.parametrize("hook_result", [[Section("Canary verdict", ["ok"])]])
def test_extra_sections_pass_through(hook_result: list[Section]) -> None:
    assert safe_extra_sections(context(), lambda ctx: hook_result) == hook_result


# --- when the demo has waited long enough for verdicts -------------------------------


def test_a_thin_early_window_does_not_end_the_wait_for_verdicts() -> None:
    thin = verdict("/play/share", Decision.INSUFFICIENT_DATA, window_seconds=10)
    traffic_end = T0 + 18.0  # the last (widest) stage ran into the next window
    assert not verdicts_settled([thin], "/play/share", traffic_end)
    last = verdict(
        "/play/share", Decision.INSUFFICIENT_DATA, window_start=T0 + 10, window_seconds=10
    )
    assert verdicts_settled([last], "/play/share", traffic_end)
    decided = verdict("/play/share", Decision.ROLLBACK, window_seconds=10)
    assert verdicts_settled([decided], "/play/share", traffic_end)
    still_filling = verdict("/play/share", Decision.ROLLBACK, complete=False)
    assert not verdicts_settled([still_filling], "/play/share", traffic_end)
    assert not verdicts_settled([decided], "/blog", traffic_end)
    assert verdicts_settled([thin], None, traffic_end)
    assert not verdicts_settled([], None, traffic_end)
