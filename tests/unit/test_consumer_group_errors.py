"""A consumer-group error aiokafka gives up on stops the worker, named in grayscope's terms.

- ``fatal_group_error`` (pipeline/kafka_options.py) maps aiokafka's errors to the error
  tree: a ConfigError naming the setting where one setting is the cause, else a
  ConsumerGroupError with the error itself;
- ``consumer_group_error`` (agents/batching.py, the fence) finds the error aiokafka keeps
  for a ``getmany`` that Faust never calls, without consuming it;
- the app raises it mapped (``from`` the original) and its watcher crashes the worker
  with one log line.

The real thing (a broker refusing a 1 s session timeout) is
tests/integration/test_worker_group_errors.py.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

import agents.app
from agents.app import create_app
from agents.batching import consumer_group_error
from pipeline.config import load_settings
from pipeline.errors import ConfigError, ConsumerGroupError, GrayscopeError
from pipeline.kafka_options import fatal_group_error


def kafka(**values: Any) -> Any:
    return load_settings(consumer_group="orders-enrich", **values).kafka


# --- the mapping -------------------------------------------------------------------


def test_a_refused_session_timeout_names_the_setting_and_the_value() -> None:
    error = fatal_group_error(
        kafka_errors.InvalidSessionTimeoutError(), kafka(kafka_session_timeout=1)
    )
    assert isinstance(error, ConfigError)
    assert error.setting == "GRAYSCOPE_KAFKA_SESSION_TIMEOUT"
    message = str(error)
    assert message.startswith("GRAYSCOPE_KAFKA_SESSION_TIMEOUT: ")
    assert "session timeout of 1 s" in message
    assert "InvalidSessionTimeoutError" in message
    assert "'orders-enrich'" in message
    assert "group.min.session.timeout.ms" in message


def test_a_refused_group_id_names_the_group_setting() -> None:
    error = fatal_group_error(kafka_errors.InvalidGroupIdError(), kafka())
    assert isinstance(error, ConfigError)
    assert error.setting == "GRAYSCOPE_CONSUMER_GROUP"
    assert "'orders-enrich'" in str(error) and "InvalidGroupIdError" in str(error)


@pytest.mark.parametrize(
    ("values", "who"),
    [
        ({}, "the worker"),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_username": "enricher",
                "kafka_sasl_password": "s3cr3t-Pa55",
            },
            "user 'enricher'",
        ),
    ],
)
def test_group_authorization_is_the_error_itself_with_whom_it_refused(
    values: dict[str, str], who: str
) -> None:
    error = fatal_group_error(
        kafka_errors.GroupAuthorizationFailedError("orders-enrich"), kafka(**values)
    )
    assert type(error) is ConsumerGroupError
    message = str(error)
    assert f"Kafka denied {who} access to consumer group 'orders-enrich'" in message
    assert "GroupAuthorizationFailedError" in message
    assert "GRAYSCOPE_CONSUMER_GROUP" in message
    assert "s3cr3t-Pa55" not in message


def test_another_applications_group_says_so() -> None:
    error = fatal_group_error(kafka_errors.InconsistentGroupProtocolError(), kafka())
    assert type(error) is ConsumerGroupError
    assert "InconsistentGroupProtocolError" in str(error)
    assert "GRAYSCOPE_CONSUMER_GROUP" in str(error)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        # aiokafka's "Unexpected error in join group" wraps the repr in a KafkaError.
        (
            kafka_errors.KafkaError("KafkaError: UnsupportedVersionError()"),
            "Kafka refused consumer group 'orders-enrich' for good: KafkaError: "
            "KafkaError: UnsupportedVersionError()",  # (sic: aiokafka's str names the class)
        ),
        (
            kafka_errors.UnknownError(),
            "Kafka refused consumer group 'orders-enrich' for good: [Error -1] UnknownError",
        ),
        # A coordination task that died of something else entirely.
        (
            RuntimeError("assignor failed"),
            "Kafka refused consumer group 'orders-enrich' for good: RuntimeError: assignor failed",
        ),
        (RuntimeError(), "Kafka refused consumer group 'orders-enrich' for good: RuntimeError"),
    ],
)
def test_any_other_error_is_named_as_it_is(exc: BaseException, expected: str) -> None:
    error = fatal_group_error(exc, kafka())
    assert type(error) is ConsumerGroupError
    assert str(error) == expected


# --- finding it (the fence) --------------------------------------------------------


def app_with(coordinator: Any) -> Any:
    """The attribute chain the fence reads: app -> Faust consumer -> its thread ->
    aiokafka consumer -> group coordinator."""
    client = SimpleNamespace(_coordinator=coordinator)
    return SimpleNamespace(_consumer=SimpleNamespace(_thread=SimpleNamespace(_consumer=client)))


def coordinator(pending: BaseException | None = None, task: Any = None) -> Any:
    return SimpleNamespace(_pending_exception=pending, _coordination_task=task)


def test_no_consumer_yet_or_no_such_names_is_no_error() -> None:
    assert consumer_group_error(None) is None
    assert consumer_group_error(SimpleNamespace()) is None
    assert consumer_group_error(SimpleNamespace(_consumer=None)) is None
    assert consumer_group_error(app_with(None)) is None  # aiokafka's consumer not started
    assert consumer_group_error(app_with(SimpleNamespace())) is None  # other aiokafka names


def test_the_error_kept_for_getmany_is_found_and_left_in_place() -> None:
    refused = kafka_errors.InvalidSessionTimeoutError()
    kept = coordinator(pending=refused)
    assert consumer_group_error(app_with(kept)) is refused
    assert kept._pending_exception is refused  # read, not consumed: aiokafka's state stays


def test_a_retriable_error_is_left_to_aiokafka() -> None:
    kept = coordinator(pending=kafka_errors.NotCoordinatorForGroupError())
    assert consumer_group_error(app_with(kept)) is None


async def test_a_coordination_task_that_died_is_an_error_and_one_that_ended_is_none() -> None:
    async def fail() -> None:
        raise RuntimeError("assignor failed")

    async def end() -> None:
        return None

    died, ended = asyncio.ensure_future(fail()), asyncio.ensure_future(end())
    running = asyncio.ensure_future(asyncio.sleep(10))
    await asyncio.wait([died, ended])
    cancelled = asyncio.ensure_future(asyncio.sleep(10))
    cancelled.cancel()
    await asyncio.wait([cancelled])
    error = consumer_group_error(app_with(coordinator(task=died)))
    assert isinstance(error, RuntimeError) and str(error) == "assignor failed"
    assert consumer_group_error(app_with(coordinator(task=ended))) is None
    assert consumer_group_error(app_with(coordinator(task=running))) is None
    assert consumer_group_error(app_with(coordinator(task=cancelled))) is None
    running.cancel()


# --- the app stops on it -----------------------------------------------------------


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Any:
    settings = load_settings(
        consumer_group="orders-enrich", kafka_session_timeout=1, geoip_city_db="", es_url=""
    )
    return create_app(settings)


def test_the_app_raises_the_mapped_error_from_the_original(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.check_consumer_group()  # nothing kept: nothing raised
    refused = kafka_errors.InvalidSessionTimeoutError()
    monkeypatch.setattr(agents.app, "consumer_group_error", lambda _app: refused)
    with pytest.raises(ConfigError, match=r"^GRAYSCOPE_KAFKA_SESSION_TIMEOUT: .* 1 s") as info:
        app.check_consumer_group()
    assert info.value.__cause__ is refused


async def test_the_watcher_crashes_the_app_with_one_log_line(
    app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    looks: list[int] = []

    def found(_app: Any) -> BaseException | None:
        looks.append(1)
        return (
            kafka_errors.GroupAuthorizationFailedError("orders-enrich") if len(looks) > 2 else None
        )

    crashes: list[BaseException] = []

    async def crash(reason: BaseException) -> None:
        crashes.append(reason)

    monkeypatch.setattr(agents.app, "consumer_group_error", found)
    monkeypatch.setattr(agents.app, "GROUP_ERROR_CHECK_INTERVAL", 0.001)
    monkeypatch.setattr(app, "crash", crash)
    with caplog.at_level(logging.CRITICAL, logger="agents.app"):
        await asyncio.wait_for(app.watch_consumer_group(), 5)
    assert len(looks) == 3  # it kept looking until there was something, then stopped
    assert len(crashes) == 1 and isinstance(crashes[0], GrayscopeError)
    assert isinstance(crashes[0].__cause__, kafka_errors.GroupAuthorizationFailedError)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert lines == [
        "Kafka consumer group error, stopping the worker: Kafka denied the worker access "
        "to consumer group 'orders-enrich' (GroupAuthorizationFailedError): allow it to "
        "read the group (ACL), or set GRAYSCOPE_CONSUMER_GROUP to a group it may use"
    ]
