"""The Jaeger configs the local stack generates: loopback only, no default port, right shape."""

from __future__ import annotations

from typing import Any

from pipeline.dev.stack.jaeger import JaegerPorts, jaeger_config, jaeger_version

# Jaeger's and the OTel Collector's defaults: none may be used (other runs share the box).
DEFAULT_PORTS = {4317, 4318, 5778, 5779, 6831, 6832, 8888, 9411, 13133, 14250, 14268, 16685, 16686}

PORTS = JaegerPorts(otlp_grpc=41001, otlp_http=41002, metrics=41003, query_http=41004,
                    query_grpc=41005)  # fmt: skip


def endpoints(node: Any) -> list[str]:
    """Every ``endpoint`` value anywhere in the config."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "endpoint" and isinstance(value, str):
                found.append(value)
            else:
                found += endpoints(value)
    elif isinstance(node, list):
        for value in node:
            found += endpoints(value)
    return found


def test_all_in_one_listens_on_the_given_loopback_ports_only() -> None:
    config = jaeger_config(PORTS)
    listeners = endpoints(config)
    assert sorted(listeners) == [f"127.0.0.1:{p}" for p in (41001, 41002, 41004, 41005)]
    [reader] = config["service"]["telemetry"]["metrics"]["readers"]
    assert reader["pull"]["exporter"]["prometheus"] == {"host": "127.0.0.1", "port": 41003}
    assert not DEFAULT_PORTS & {int(e.rsplit(":", 1)[1]) for e in listeners}
    # Only the extensions that were given ports: no health check, pprof or zpages on defaults.
    assert config["service"]["extensions"] == ["jaeger_storage", "jaeger_query"]
    # Straight into the store: senders batch already (the module's doc has the figures).
    assert config["service"]["pipelines"]["traces"] == {
        "receivers": ["otlp"],
        "exporters": ["jaeger_storage_exporter"],
    }
    assert "processors" not in config
    assert config["extensions"]["jaeger_query"]["storage"] == {"traces": "memstore"}


def test_relay_forwards_otlp_to_its_upstream() -> None:
    ports = JaegerPorts(otlp_grpc=42001, otlp_http=42002, metrics=42003)
    config = jaeger_config(ports, upstream="127.0.0.1:41001")
    assert "extensions" not in config
    exporter = config["exporters"]["otlp"]
    assert exporter["endpoint"] == "127.0.0.1:41001"
    assert exporter["tls"] == {"insecure": True}
    listeners = [e for e in endpoints(config) if e != exporter["endpoint"]]
    assert sorted(listeners) == ["127.0.0.1:42001", "127.0.0.1:42002"]
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["otlp"]


def test_the_recipe_pins_the_approved_release() -> None:
    # v1.75.0 is the v1 twin tag of Jaeger v2.12.0; newer tags are not approved releases.
    assert jaeger_version() == "1.75.0"
