"""One copy of the Kafka connection options: aiokafka keywords and Faust settings agree."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from agents.app import faust_settings
from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError, GrayscopeError
from pipeline.kafka_options import (
    check_login,
    client_options,
    faust_broker_settings,
    raise_topic_errors,
    replication_factor,
    security,
    topic_replicas,
)

SECRET = "s3cr3t-Pa55"


def scram(**values: Any) -> Settings:
    return load_settings(
        kafka_brokers="k1:9093, k2:9093",
        kafka_security_protocol="sasl_ssl",
        kafka_sasl_mechanism="scram-sha-512",
        kafka_sasl_username="grayscope",
        kafka_sasl_password=SECRET,
        **values,
    )


def test_plaintext_is_bootstrap_only() -> None:
    settings = load_settings(kafka_brokers="a:9092,b:9092")
    assert client_options(settings.kafka) == {"bootstrap_servers": "a:9092,b:9092"}
    assert faust_broker_settings(settings.kafka) == {"broker": ["kafka://a:9092", "kafka://b:9092"]}


def test_sasl_ssl_scram_options() -> None:
    options = client_options(scram().kafka)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "grayscope"
    assert options["sasl_plain_password"] == SECRET
    assert options["ssl_context"].check_hostname  # verifying, never CERT_NONE


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("SSL", "PLAIN"),
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SASL_SSL", "SCRAM-SHA-512"),
    ],
)
def test_faust_and_aiokafka_see_the_same_connection(protocol: str, mechanism: str) -> None:
    settings = load_settings(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET,
    )
    faust_conf = faust_settings(settings)
    from_faust = dict(credentials_to_aiokafka_auth(faust_conf["broker_credentials"]))
    direct = client_options(settings.kafka)
    direct.pop("bootstrap_servers")
    # The contexts are built per call; both verify with the same trust store.
    assert (from_faust.pop("ssl_context") is None) == (direct.pop("ssl_context", None) is None)
    assert from_faust == direct


def test_sasl_needs_a_user_name() -> None:
    settings = load_settings(kafka_security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ConfigError, match="GRAYSCOPE_KAFKA_SASL_USERNAME"):
        client_options(settings.kafka)


def test_unknown_mechanism_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"GRAYSCOPE_KAFKA_SASL_MECHANISM.*SCRAM-SHA-512"):
        load_settings(kafka_sasl_mechanism="GSSAPI")


def test_missing_ca_file_names_the_setting(tmp_path: Any) -> None:
    settings = scram(kafka_ssl_ca_file=str(tmp_path / "absent.pem"))
    with pytest.raises(ConfigError, match="GRAYSCOPE_KAFKA_SSL_CA_FILE") as raised:
        client_options(settings.kafka)
    assert SECRET not in str(raised.value)


def test_no_secret_in_any_representation() -> None:
    settings = scram()
    sec = security(settings.kafka)
    faust_conf = faust_broker_settings(settings.kafka)
    for text in (
        repr(settings),
        str(settings.redacted()),
        repr(settings.kafka),
        repr(sec),
        repr(faust_conf),
    ):
        assert SECRET not in text


def test_check_login_is_a_no_op_on_plaintext() -> None:
    asyncio.run(check_login(load_settings(kafka_brokers="127.0.0.1:1").kafka))


def test_replication_factor_zero_is_refused() -> None:
    with pytest.raises(ConfigError, match="GRAYSCOPE_KAFKA_TOPIC_REPLICATION_FACTOR"):
        load_settings(kafka_topic_replication_factor=0)


@dataclass
class DescribeResponse:
    resources: list[tuple[Any, ...]]


@dataclass
class FakeAdmin:
    """Answers describe_cluster/describe_configs as aiokafka's admin client does."""

    default_factor: str | None = "3"
    fail: bool = False
    asked: list[Any] = field(default_factory=list)

    async def describe_cluster(self) -> dict[str, Any]:
        if self.fail:
            raise OSError("connection reset")
        return {"brokers": [{"node_id": 2, "host": "h", "port": 1}]}

    async def describe_configs(self, resources: Sequence[Any]) -> list[DescribeResponse]:
        self.asked.extend(resources)
        entries = []
        if self.default_factor is not None:
            entries.append(("default.replication.factor", self.default_factor, False, 5, False))
        return [DescribeResponse([(0, None, 4, "2", entries)])]


def test_configured_replication_factor_wins() -> None:
    admin = FakeAdmin()
    settings = load_settings(kafka_topic_replication_factor=2)
    assert asyncio.run(replication_factor(admin, settings.kafka)) == 2
    assert admin.asked == []


def test_default_replication_factor_is_the_clusters() -> None:
    admin = FakeAdmin(default_factor="3")
    assert asyncio.run(replication_factor(admin, load_settings().kafka)) == 3
    assert [(r.name, r.configs) for r in admin.asked] == [
        ("2", {"default.replication.factor": None})
    ]


@pytest.mark.parametrize("admin", [FakeAdmin(fail=True), FakeAdmin(default_factor=None)])
def test_unreadable_default_names_the_setting(admin: FakeAdmin) -> None:
    with pytest.raises(ConfigError, match="GRAYSCOPE_KAFKA_TOPIC_REPLICATION_FACTOR"):
        asyncio.run(replication_factor(admin, load_settings().kafka))


@dataclass
class CreateResponse:
    topic_errors: list[tuple[str, int, str | None]]


def test_topic_errors_name_the_topic_and_ignore_existing() -> None:
    raise_topic_errors(CreateResponse([("a", 0, None), ("b", 36, "exists")]))
    with pytest.raises(GrayscopeError, match="c: InvalidReplicationFactorError"):
        raise_topic_errors(CreateResponse([("a", 0, None), ("c", 38, "only 1 broker")]))


def test_worker_declares_topics_with_the_resolved_factor() -> None:
    settings = load_settings(kafka_topic_replication_factor=3)
    assert asyncio.run(topic_replicas(settings.kafka)) == 3  # configured: no question to Kafka
    assert faust_settings(settings, 3)["topic_replication_factor"] == 3
    assert "topic_replication_factor" not in faust_settings(settings)  # unknown: Faust's


def test_the_worker_refreshes_metadata_well_before_fausts_five_minutes() -> None:
    # A topic declared at the first start may be missing from the first assignment;
    # the group rebalances once the leader's metadata shows it (agents/app.py).
    conf = faust_settings(load_settings())
    assert conf["consumer_metadata_max_age_ms"] <= 30_000


def test_apps_of_one_process_share_one_temporary_data_dir_unless_one_is_set() -> None:
    # One per app call, never removed, piled up in the temporary directory (agents/app.py;
    # its removal at exit: tests/integration/test_worker.py).
    first, second = (faust_settings(load_settings())["datadir"] for _ in range(2))
    assert first == second
    assert faust_settings(load_settings(data_dir="/srv/grayscope"))["datadir"] == "/srv/grayscope"
