"""Kafka security for real: SASL/SCRAM-SHA-512 over TLS (a keytool-made CA) on Apache Kafka.

``grayscope setup``, ``grayscope produce`` and ``grayscope worker`` connect with
the configured credentials and CA file; a wrong password ends each of them with
an error naming the setting, and no output or log line carries a password.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.dev.stack.kafka import KafkaNode, kafka_lib, read_topic
from pipeline.dev.stack.opensearch import OpenSearchNode
from tests.integration.conftest import unique_name
from tests.integration.ledger import (
    KAFKA_MIN_SESSION_S,
    assert_committed_within,
    committed_offsets,
    coordinates,
    wait_until,
)
from tests.integration.secure_kafka import (
    MECHANISM,
    cached_ca,
    cached_certificates,
    secure_node,
)
from tests.integration.test_worker import store_count, store_ids
from tests.integration.worker_proc import WorkerProcess

pytestmark = pytest.mark.expected_seconds(40)

USER = "grayscope-worker"
PASSWORD = "Right-h0rse-battery"  # a throwaway test user's
WRONG_PASSWORD = "Wr0ng-staple-guess"
SECRETS = (PASSWORD, WRONG_PASSWORD)


class SecureKafka:
    def __init__(self, node: KafkaNode, sasl_bootstrap: str, ca_pem: Path) -> None:
        self.node = node
        self.sasl_bootstrap = sasl_bootstrap
        self.ca_pem = ca_pem

    def env(self, password: str = PASSWORD) -> dict[str, str]:
        return {
            "GRAYSCOPE_KAFKA_BROKERS": self.sasl_bootstrap,
            "GRAYSCOPE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "GRAYSCOPE_KAFKA_SASL_MECHANISM": MECHANISM,
            "GRAYSCOPE_KAFKA_SASL_USERNAME": USER,
            "GRAYSCOPE_KAFKA_SASL_PASSWORD": password,
            "GRAYSCOPE_KAFKA_SSL_CA_FILE": str(self.ca_pem),
        }


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    base = tmp_path_factory.mktemp("secure-kafka")
    certificates = cached_certificates(tls_cache())
    lib = kafka_lib(service_cache())
    node, sasl_bootstrap = secure_node(base / "node", lib, certificates, {USER: PASSWORD})
    with node.start():
        yield SecureKafka(node, sasl_bootstrap, certificates.ca_pem)


def service_cache() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "grayscope"


def tls_cache() -> Path:
    """Throwaway test certificates, made once a day (secure_kafka.py)."""
    return service_cache() / "test-tls"


def grayscope(command: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run a grayscope command; its exit status and everything it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.commands.main", *command],
        env={**os.environ, "GRAYSCOPE_OTLP_ENDPOINT": "", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


async def test_setup_produce_and_worker_connect_with_scram_over_tls(
    secure_kafka: SecureKafka,
    store: OpenSearchNode,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    topic, dlq = unique_name("secure"), unique_name("secure-dlq")
    env = secure_kafka.env() | {
        "GRAYSCOPE_INPUT_TOPICS": topic,
        "GRAYSCOPE_DLQ_TOPIC": dlq,
        "GRAYSCOPE_CONSUMER_GROUP": unique_name("grayscope"),
        "GRAYSCOPE_ES_URL": "",
    }
    code, out = grayscope(["setup", "--partitions", "3"], env)
    assert code == 0, out
    assert f"created: {topic}, {dlq} with 3 partitions x 1 replicas" in out
    assert_no_secret(out)

    code, out = grayscope(["produce", "--synthetic", "--count", "2000", "--no-progress"], env)
    assert code == 0, out
    assert_no_secret(out)
    records = await read_topic(secure_kafka.node.bootstrap, topic)  # PLAINTEXT side
    assert len(records) == 2000

    worker_env = env | {
        "GRAYSCOPE_ES_URL": store.url,
        "GRAYSCOPE_LOG_LEVEL": "debug",  # the chattiest log must not carry the password either
        "GRAYSCOPE_KAFKA_SESSION_TIMEOUT": str(KAFKA_MIN_SESSION_S),
    }
    worker = workers(worker_env)
    worker.wait_ready()
    expected = {f"{topic}-{r.partition}-{r.offset}" for r in records}
    await wait_until(lambda: store_count(store) >= len(expected), 90, "every document")
    assert store_ids(store) == expected
    assert worker.terminate() == 0
    group = worker_env["GRAYSCOPE_CONSUMER_GROUP"]
    committed = await committed_offsets(secure_kafka.node.bootstrap, group, topic)
    assert sum(committed.values()) == len(expected)  # committed to the end, and no further
    assert_committed_within(committed, {coordinates(i) for i in expected})
    assert_no_secret(worker.log_path.read_text(errors="replace"))


@pytest.mark.parametrize("command", [["setup"], ["produce", "--synthetic", "--count", "10"]])
def test_a_wrong_password_names_the_setting_and_is_never_printed(
    secure_kafka: SecureKafka, command: list[str]
) -> None:
    env = secure_kafka.env(WRONG_PASSWORD) | {
        "GRAYSCOPE_INPUT_TOPICS": unique_name("never"),
        "GRAYSCOPE_ES_URL": "",
    }
    code, out = grayscope(command, env)
    assert code != 0
    assert "GRAYSCOPE_KAFKA_SASL_PASSWORD" in out, out
    assert "SaslAuthenticationFailed" in out
    assert_no_secret(out)


def test_a_worker_with_a_wrong_password_exits_naming_the_setting(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    env = secure_kafka.env(WRONG_PASSWORD) | {"GRAYSCOPE_INPUT_TOPICS": unique_name("never")}
    worker = WorkerProcess(env | {"GRAYSCOPE_ES_URL": ""}, tmp_path / "worker.log").start()
    assert worker.proc is not None
    try:
        code = worker.proc.wait(60)
    finally:
        worker.kill()
    out = worker.log_path.read_text(errors="replace")
    assert code != 0
    assert "configuration error" in out and "GRAYSCOPE_KAFKA_SASL_PASSWORD" in out, out
    assert_no_secret(out)


def test_an_unknown_ca_names_the_ca_setting(secure_kafka: SecureKafka) -> None:
    other_ca = cached_ca(tls_cache(), "other-ca")  # a CA that did not sign the broker
    env = secure_kafka.env() | {
        "GRAYSCOPE_KAFKA_SSL_CA_FILE": str(other_ca),
        "GRAYSCOPE_ES_URL": "",
        "GRAYSCOPE_INPUT_TOPICS": unique_name("never"),
    }
    code, out = grayscope(["setup"], env)
    assert code != 0
    assert "GRAYSCOPE_KAFKA_SSL_CA_FILE" in out and "certificate" in out, out
    assert_no_secret(out)
