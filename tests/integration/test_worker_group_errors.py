"""A consumer-group error the worker cannot get past ends it, on real Apache Kafka.

The broker refuses a join with a session timeout below its
``group.min.session.timeout.ms`` (6 s) as ``INVALID_SESSION_TIMEOUT``: aiokafka
logs "Attempt to join group failed due to fatal error" and keeps the error for
the next ``getmany``, which Faust's fetcher never calls. The worker must not sit
there forever with ``/healthz`` at 503: it exits non-zero with one log line that
names the setting to change.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import TopicFactory, unique_name
from tests.integration.worker_proc import WorkerProcess

pytestmark = pytest.mark.expected_seconds(30)

#: From the worker's start to its exit: a Faust start (~5-10 s on a loaded 2-core box)
#: and a refused join (one round trip), with room for a busy machine.
EXIT_WITHIN_S = 90


@pytest.mark.parametrize("mode", ["batch", "stream"])
async def test_a_session_timeout_the_broker_refuses_ends_the_worker_naming_the_setting(
    bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, mode: str
) -> None:
    topic = await topic_factory(partitions=1, prefix="group-error")
    worker = WorkerProcess(
        {
            "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
            "GRAYSCOPE_INPUT_TOPICS": topic,
            "GRAYSCOPE_DLQ_TOPIC": unique_name("group-error-dlq"),
            "GRAYSCOPE_CONSUMER_GROUP": unique_name("grayscope"),
            "GRAYSCOPE_CONSUMER_MODE": mode,
            "GRAYSCOPE_ES_URL": "",
            "GRAYSCOPE_OTLP_ENDPOINT": "",
            "GRAYSCOPE_KAFKA_SESSION_TIMEOUT": "1",  # the broker's minimum is 6 s
        },
        tmp_path / "worker.log",
    ).start()
    assert worker.proc is not None
    try:
        code: int | None = worker.proc.wait(EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        code = None  # still running: the bug
    finally:
        worker.kill()  # a no-op once it exited
    out = worker.log_path.read_text(errors="replace")
    assert code == 2, f"exit status {code} (2: a configuration error):\n{worker.tail()}"
    # One log line of the worker's names the cause and the setting, with the refused value.
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    critical = [r["message"] for r in records if r["level"] == "critical"]
    named = [m for m in critical if "GRAYSCOPE_KAFKA_SESSION_TIMEOUT" in m]
    assert len(named) == 1, critical
    assert "InvalidSessionTimeoutError" in named[0] and "1 s" in named[0], named
    # ... and the command's last word says the same (as for any configuration error).
    assert (
        out.rstrip()
        .splitlines()[-1]
        .startswith("grayscope: configuration error: GRAYSCOPE_KAFKA_SESSION_TIMEOUT: ")
    ), worker.tail()
