"""How grayscope connects to Kafka: one place for bootstrap servers and security.

The worker (Faust), ``grayscope produce`` and ``grayscope setup`` (aiokafka) all
take their connection from here, so a SASL or SSL cluster reached by one is
reached by all. :func:`client_options` gives aiokafka's keywords,
:func:`faust_broker_settings` Faust's ``broker``/``broker_credentials`` from the
same :class:`KafkaSecurity`; :func:`check_login` turns a refused login into a
:class:`~pipeline.errors.ConfigError` that names the setting to fix (aiokafka
itself only reports "Unable to bootstrap"), and :func:`fatal_group_error` does
the same for a consumer group the broker refuses for good (the worker stops).

Secrets: the password is read from its ``SecretStr`` only where a client is
built; no message produced here contains it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from pipeline.config import KafkaSettings
from pipeline.errors import ConfigError, ConsumerGroupError, GrayscopeError

log = logging.getLogger(__name__)

SASL_SETTINGS = "GRAYSCOPE_KAFKA_SASL_USERNAME / GRAYSCOPE_KAFKA_SASL_PASSWORD"
CA_SETTING = "GRAYSCOPE_KAFKA_SSL_CA_FILE"
SESSION_TIMEOUT_SETTING = "GRAYSCOPE_KAFKA_SESSION_TIMEOUT"
GROUP_SETTING = "GRAYSCOPE_CONSUMER_GROUP"


@dataclass(frozen=True)
class KafkaSecurity:
    """The security half of a Kafka connection, validated once."""

    protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str | None = None
    sasl_username: str = ""
    sasl_password: SecretStr = field(default_factory=lambda: SecretStr(""))

    @property
    def uses_sasl(self) -> bool:
        return self.sasl_mechanism is not None


def bootstrap_servers(kafka: KafkaSettings) -> list[str]:
    return [b.strip() for b in kafka.brokers.split(",") if b.strip()]


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """A verifying TLS context: the configured CA file, else the system's trust store."""
    cafile = kafka.ssl_ca_file or None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(CA_SETTING, f"cannot load {cafile}: {reason}") from exc


def security(kafka: KafkaSettings) -> KafkaSecurity:
    protocol = kafka.security_protocol
    context = ssl_context(kafka) if protocol.endswith("SSL") else None
    if not protocol.startswith("SASL"):
        return KafkaSecurity(protocol=protocol, ssl_context=context)
    if not kafka.sasl_username:
        raise ConfigError("GRAYSCOPE_KAFKA_SASL_USERNAME", f"required with {protocol}")
    return KafkaSecurity(
        protocol=protocol,
        ssl_context=context,
        sasl_mechanism=kafka.sasl_mechanism,
        sasl_username=kafka.sasl_username,
        sasl_password=kafka.sasl_password,
    )


def security_options(sec: KafkaSecurity) -> dict[str, Any]:
    """aiokafka's security keywords; empty for PLAINTEXT (aiokafka's default)."""
    if sec.protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.ssl_context is not None:
        options["ssl_context"] = sec.ssl_context
    if sec.uses_sasl:
        options["sasl_mechanism"] = sec.sasl_mechanism
        options["sasl_plain_username"] = sec.sasl_username
        options["sasl_plain_password"] = sec.sasl_password.get_secret_value()
    return options


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka client keywords (bootstrap, security, SASL) from the settings."""
    return {
        "bootstrap_servers": kafka.brokers,
        **security_options(security(kafka)),
    }


def faust_broker_settings(kafka: KafkaSettings) -> dict[str, Any]:
    """Faust's ``broker`` and, unless PLAINTEXT, ``broker_credentials``."""
    import faust

    conf: dict[str, Any] = {"broker": [f"kafka://{b}" for b in bootstrap_servers(kafka)]}
    sec = security(kafka)
    if sec.uses_sasl:
        conf["broker_credentials"] = faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password.get_secret_value(),
            ssl_context=sec.ssl_context,
            mechanism=sec.sasl_mechanism,
        )
    elif sec.ssl_context is not None:
        conf["broker_credentials"] = faust.SSLCredentials(sec.ssl_context)
    return conf


def _host_port(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    if not host:
        return server, 9092
    return host.strip("[]"), int(port)


async def check_login(kafka: KafkaSettings, timeout: float = 10.0) -> None:
    """Raise ConfigError when a broker refuses the configured login or certificate.

    Connects to the bootstrap servers in turn until one answers; an unreachable
    cluster is not this check's business (callers report or wait for it).
    """
    from aiokafka.conn import create_conn
    from aiokafka.errors import (
        KafkaError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    sec = security(kafka)
    if sec.protocol == "PLAINTEXT":
        return
    for server in bootstrap_servers(kafka):
        try:
            host, port = _host_port(server)
        except ValueError:
            raise ConfigError("GRAYSCOPE_KAFKA_BROKERS", f"not host:port: {server!r}") from None
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    request_timeout_ms=int(timeout * 1000),
                    security_protocol=sec.protocol,
                    ssl_context=sec.ssl_context,
                    sasl_mechanism=sec.sasl_mechanism or "PLAIN",
                    sasl_plain_username=sec.sasl_username or None,
                    sasl_plain_password=sec.sasl_password.get_secret_value() or None,
                ),
                timeout,
            )
        except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as exc:
            raise ConfigError(
                SASL_SETTINGS,
                f"Kafka at {server} refused the {sec.sasl_mechanism} login of user "
                f"{sec.sasl_username!r}: {exc}",
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(
                CA_SETTING,
                f"cannot verify the certificate of Kafka at {server}: {exc.verify_message}",
            ) from None
        except (TimeoutError, OSError, KafkaError):
            continue  # unreachable or not answering: try the next one
        conn.close()
        return


def fatal_group_error(exc: BaseException, kafka: KafkaSettings) -> GrayscopeError:
    """What a consumer-group error aiokafka gives up on means for the worker.

    aiokafka keeps such an error (a refused JoinGroup, a heartbeat denied) for the
    consumer's next ``getmany`` and retries the join meanwhile, which fails the same
    way for as long as nothing is changed: the worker stops with this error instead
    (``agents/app.py``). A ConfigError naming the setting to change where one setting
    is the cause, else a ConsumerGroupError with the error itself. The caller
    raises it ``from exc``.
    """
    from aiokafka import errors as kafka_errors

    kind = type(exc).__name__
    group = kafka.consumer_group
    if isinstance(exc, kafka_errors.InvalidSessionTimeoutError):
        return ConfigError(
            SESSION_TIMEOUT_SETTING,
            f"Kafka refused to let the worker join consumer group {group!r} with a session "
            f"timeout of {kafka.session_timeout:g} s ({kind}): set it within the brokers' "
            "group.min.session.timeout.ms and group.max.session.timeout.ms "
            "(Kafka's defaults: 6 s and 1800 s)",
        )
    if isinstance(exc, kafka_errors.InvalidGroupIdError):
        return ConfigError(GROUP_SETTING, f"Kafka refused the consumer group id {group!r} ({kind})")
    if isinstance(exc, kafka_errors.GroupAuthorizationFailedError):
        who = f"user {kafka.sasl_username!r}" if kafka.sasl_username else "the worker"
        return ConsumerGroupError(
            f"Kafka denied {who} access to consumer group {group!r} ({kind}): allow it to "
            f"read the group (ACL), or set {GROUP_SETTING} to a group it may use"
        )
    if isinstance(exc, kafka_errors.InconsistentGroupProtocolError):
        return ConsumerGroupError(
            f"consumer group {group!r} is in use by another application's consumers "
            f"({kind}): give grayscope a group of its own ({GROUP_SETTING})"
        )
    text = str(exc)  # aiokafka's errors name their class themselves
    described = text if kind in text else f"{kind}: {text}" if text else kind
    return ConsumerGroupError(f"Kafka refused consumer group {group!r} for good: {described}")


REPLICATION_SETTING = "GRAYSCOPE_KAFKA_TOPIC_REPLICATION_FACTOR"


async def replication_factor(admin: Any, kafka: KafkaSettings) -> int:
    """The replication factor for new topics: the configured one, else the cluster's default.

    The default is read from a broker's ``default.replication.factor``
    (DescribeConfigs) rather than sent as -1: that needs CreateTopics v4
    (KIP-464), which aiokafka does not speak.
    """
    if kafka.topic_replication_factor > 0:
        return kafka.topic_replication_factor
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    try:
        cluster = await admin.describe_cluster()
        broker_id = str(cluster["brokers"][0]["node_id"])
        responses = await admin.describe_configs(
            [
                ConfigResource(
                    ConfigResourceType.BROKER, broker_id, {"default.replication.factor": None}
                )
            ]
        )
        for response in responses:
            for resource in response.resources:
                for entry in resource[4]:
                    if entry[0] == "default.replication.factor":
                        return int(entry[1])
    except Exception as exc:  # aiokafka errors, an unexpected response shape
        raise ConfigError(
            REPLICATION_SETTING,
            f"cannot read the cluster's default.replication.factor ({exc}); set it explicitly",
        ) from exc
    raise ConfigError(
        REPLICATION_SETTING, "the cluster reports no default.replication.factor; set it explicitly"
    )


def raise_topic_errors(response: Any) -> None:
    """GrayscopeError naming each topic a CreateTopics response refused (exists is fine)."""
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    failures = []
    for topic_error in response.topic_errors:
        topic, code = topic_error[0], topic_error[1]
        message = topic_error[2] if len(topic_error) > 2 else None
        if code == 0 or for_code(code) is TopicAlreadyExistsError:
            continue
        failures.append(f"{topic}: {for_code(code).__name__} {message or ''}".strip())
    if failures:
        raise GrayscopeError("cannot create topics: " + "; ".join(failures))


async def topic_replicas(kafka: KafkaSettings) -> int | None:
    """The replication factor for topics the worker declares itself (changelogs, dead letters).

    The configured one, else the cluster's default; None when Kafka cannot tell
    now (unreachable, or DescribeConfigs not allowed): Faust's own default then.
    """
    if kafka.topic_replication_factor > 0:
        return kafka.topic_replication_factor
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(kafka), request_timeout_ms=10_000)
    try:
        await admin.start()
        return await replication_factor(admin, kafka)
    except Exception as exc:  # unreachable or not allowed: not fatal for the worker
        log.warning("cannot read the cluster's default.replication.factor: %s", exc)
        return None
    finally:
        await admin.close()
