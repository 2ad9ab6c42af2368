"""Settings: the DESIGN's configuration table, env prefix, flags mirroring variables."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import orjson
import pytest

from pipeline.config import (
    DEFAULT_TRUSTED_PROXIES,
    Settings,
    WhenFull,
    add_settings_arguments,
    flag_name,
    load_path_rules,
    load_settings,
    settings_from_args,
)
from pipeline.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("GRAYSCOPE_"):
            monkeypatch.delenv(key)


def test_design_defaults() -> None:
    settings = load_settings()
    assert settings.kafka_brokers == "localhost:9092"
    assert settings.input_topics == ["access-logs"]
    assert settings.dlq_topic == "access-logs-dlq"
    assert settings.es_url == "http://localhost:9200"
    assert settings.es_mode == "data_stream"
    assert settings.otlp_endpoint == ""
    assert settings.geoip_asn_db == ""


def test_default_trusted_proxies_are_loopback_rfc1918_rfc4193_link_local() -> None:
    networks = {ipaddress.ip_network(c) for c in load_settings().trusted_proxies}
    assert networks == {
        ipaddress.ip_network(c)
        for c in (
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
            "169.254.0.0/16",
            "fe80::/10",
        )
    }
    assert DEFAULT_TRUSTED_PROXIES.split(",") == load_settings().trusted_proxies


def test_gray_rule_defaults_match_the_design() -> None:
    settings = load_settings()
    assert settings.gray_id_headers == ["x-abtest-id", "x-gray-id"]
    assert settings.gray_id_header_pattern == r"^[a-z0-9]{8,16}$"
    assert settings.gray_id_query_arg == "abt"
    assert settings.gray_id_query_pattern == r"^[a-z0-9]{4,12}$"
    assert settings.path_group_depth == 2


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAYSCOPE_INPUT_TOPICS", "a, b,,c")
    monkeypatch.setenv("GRAYSCOPE_TRUSTED_PROXIES", "203.0.113.0/24,2001:db8::/32")
    monkeypatch.setenv("GRAYSCOPE_GRAY_ID_HEADERS", "X-Exp_Id,X-Other")
    settings = load_settings()
    assert settings.input_topics == ["a", "b", "c"]
    assert settings.trusted_proxies == ["203.0.113.0/24", "2001:db8::/32"]
    assert settings.gray_id_headers == ["x-exp-id", "x-other"]


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError):
        load_settings(no_such_setting=1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("trusted_proxies", "bogus"),
        ("trusted_proxies", "10.0.0.0/33"),
        ("max_message_bytes", "abc"),
        ("max_message_bytes", "10"),
        ("path_group_depth", "0"),
        ("path_rules", "{}"),
        ("path_rules", '[{"group": "/x"}]'),
        ("path_rules", '[{"match": "^/x", "route": 5}]'),
        ("es_mode", "weekly"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**{name: value})
    assert info.value.setting == f"GRAYSCOPE_{name.upper()}"


def test_every_setting_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    for name in Settings.model_fields:
        assert flag_name(name) in flags
        assert Settings.model_fields[name].description, name


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAYSCOPE_PATH_GROUP_DEPTH", "3")
    monkeypatch.setenv("GRAYSCOPE_SERVICE_NAME", "from-env")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--path-group-depth", "1"]))
    assert settings.path_group_depth == 1
    assert settings.service_name == "from-env"


def test_path_rules_inline_and_from_a_file(tmp_path: Path) -> None:
    rules = [{"match": "^/blog/", "group": "/blog", "route": "/blog/{slug}"}]
    assert load_path_rules(orjson.dumps(rules).decode()) == rules
    path = tmp_path / "rules.json"
    path.write_bytes(orjson.dumps(rules))
    assert load_path_rules(f"@{path}") == rules
    assert load_path_rules("  ") == []


def test_secrets_are_redacted() -> None:
    settings = load_settings(es_password="hunter2", es_api_key="k", kafka_sasl_password="p")
    redacted = settings.redacted()
    assert "hunter2" not in repr(settings)
    assert redacted["es_password"] == redacted["es_api_key"] == "**********"
    assert redacted["kafka_sasl_password"] == "**********"
    assert "hunter2" not in orjson.dumps(redacted).decode()


def test_every_section_field_reads_a_documented_flat_setting() -> None:
    from dataclasses import fields

    from pipeline.config import SECTIONS, Settings

    settings = load_settings(kafka_brokers="a:1,b:2", es_url="http://x:9200,http://y:9200")
    seen: set[str] = set()
    for name, cls in SECTIONS.items():
        section = getattr(settings, name)
        assert isinstance(section, cls)
        for item in fields(cls):
            setting = item.metadata["setting"]
            assert Settings.model_fields[setting].description, setting
            value = getattr(settings, setting)
            expected = tuple(value) if isinstance(value, list) else value
            assert getattr(section, item.name) == expected
            assert setting not in seen  # one section per setting
            seen.add(setting)
    assert settings.kafka.brokers == "a:1,b:2"
    assert settings.store.hosts() == ["http://x:9200", "http://y:9200"]


def test_the_defaults_leave_room_in_the_span_queue_for_every_batch_in_flight() -> None:
    settings = Settings(otlp_endpoint="http://collector:4317")
    assert settings.batch_size * settings.batch_concurrency <= settings.otlp_queue_size // 2
    assert settings.span_burst_warning() is None


def test_batches_that_could_fill_the_span_queue_at_once_are_warned_about() -> None:
    settings = Settings(
        otlp_endpoint="http://collector:4317",
        batch_size=5000,
        batch_concurrency=4,
        otlp_queue_size=20_000,
    )
    warning = settings.span_burst_warning()
    assert warning is not None
    assert "20,000 spans" in warning and "GRAYSCOPE_OTLP_QUEUE_SIZE (20,000)" in warning
    assert "at least 40,000" in warning
    roomy = Settings(
        otlp_endpoint="http://collector:4317",
        batch_size=5000,
        batch_concurrency=4,
        otlp_queue_size=40_000,
    )
    assert roomy.span_burst_warning() is None
    # Without span export there is no queue to overflow.
    assert Settings(batch_size=5000, batch_concurrency=4).span_burst_warning() is None


def test_otlp_when_full_is_validated_and_reaches_the_otlp_section() -> None:
    assert Settings().otlp_when_full is WhenFull.DROP_NEWEST  # today's behaviour by default
    settings = Settings(otlp_when_full="block")
    assert settings.otlp.when_full is WhenFull.BLOCK
    with pytest.raises(ConfigError, match="GRAYSCOPE_OTLP_WHEN_FULL"):
        load_settings(otlp_when_full="drop_oldest")


def test_block_mode_is_not_warned_about_span_bursts() -> None:
    # The burst that drops a fifth of the spans in drop_newest mode only waits in block mode.
    bursty = {
        "otlp_endpoint": "http://collector:4317",
        "batch_size": 5000,
        "batch_concurrency": 4,
        "otlp_queue_size": 20_000,
    }
    assert Settings(**bursty, otlp_when_full="drop_newest").span_burst_warning() is not None
    assert Settings(**bursty, otlp_when_full="block").span_burst_warning() is None
    warning = Settings(**bursty).span_burst_warning()
    assert warning is not None and "GRAYSCOPE_OTLP_WHEN_FULL=block" in warning
