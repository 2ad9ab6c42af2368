"""``grayscope produce`` as a real subprocess against the embedded broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.conftest import ReadRecords, TopicFactory

TIMEOUT = 120


def produce_argv(*args: str) -> list[str]:
    """The command as users run it once it is wired into the CLI, else its module."""
    from pipeline.commands.main import COMMANDS

    if "produce" in COMMANDS:
        return [sys.executable, "-m", "pipeline.commands.main", "produce", *args]
    return [sys.executable, "-m", "pipeline.commands.produce", *args]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GRAYSCOPE_")}


async def produce(
    bootstrap: str, topic: str, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    argv = produce_argv("--kafka-brokers", bootstrap, "--input-topics", topic, *args)
    return await asyncio.to_thread(
        subprocess.run,
        argv,
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        env=clean_env(),
    )


def values(records: list[Any]) -> list[bytes]:
    return [r.value for r in records]


@pytest.mark.partitions(1)
async def test_file_is_sent_line_by_line_in_order(
    bootstrap: str, unique_topic: str, read_records: ReadRecords, tmp_path: Path
) -> None:
    lines = [orjson.dumps({"n": i, "path": f"/blog/{i}"}) for i in range(3000)]
    # CRLF endings, blank lines and a last line without a newline.
    text = b"\r\n".join(lines[:1500]) + b"\r\n\r\n\n" + b"\n".join(lines[1500:])
    path = tmp_path / "input.log"
    path.write_bytes(text)

    done = await produce(bootstrap, unique_topic, "--file", str(path))

    assert done.returncode == 0, done.stderr.decode()
    assert b"3,000 messages" in done.stderr
    assert f"sent to {unique_topic}".encode() in done.stderr
    assert values(await read_records(unique_topic)) == lines


async def test_stdin_over_several_partitions_keeps_order_per_partition(
    bootstrap: str, unique_topic: str, read_records: ReadRecords
) -> None:
    # ~1 MB: several 256 KiB batches, so several partitions.
    lines = [f"line {i:05d} {'x' * 200}".encode() for i in range(5000)]

    done = await produce(
        bootstrap, unique_topic, "--file", "-", "--no-progress", stdin=b"\n".join(lines) + b"\n"
    )

    assert done.returncode == 0, done.stderr.decode()
    records = await read_records(unique_topic)
    assert sorted(values(records)) == lines
    by_partition: dict[int, list[bytes]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record.value)
    assert len(by_partition) > 1  # batches rotate over the partitions
    for sent in by_partition.values():
        assert sent == sorted(sent)


async def test_synthetic_count_with_rate_and_compression(
    bootstrap: str, topic_factory: TopicFactory, read_records: ReadRecords
) -> None:
    topic = await topic_factory(partitions=2)

    done = await produce(
        bootstrap,
        topic,
        "--synthetic",
        "--count",
        "1500",
        "--seed",
        "4",
        "--canary-share",
        "0.5",
        "--regression",
        "/play/share",
        "--rate",
        "5000",
        "--compression",
        "gzip",
        "--partition",
        "1",
    )

    assert done.returncode == 0, done.stderr.decode()
    assert b"1,500 messages" in done.stderr
    records = await read_records(topic)
    assert len(records) == 1500
    assert {r.partition for r in records} == {1}
    assert all(r.value for r in records)
    assert sum(b"canary" in r.value for r in records) > 300


async def test_synthetic_traffic_is_enriched_by_the_core(
    bootstrap: str, unique_topic: str, read_records: ReadRecords
) -> None:
    from pipeline.config import load_settings
    from pipeline.core.process import Enriched, process
    from pipeline.core.enrich import EnrichContext

    done = await produce(bootstrap, unique_topic, "--synthetic", "--count", "300")

    assert done.returncode == 0, done.stderr.decode()
    ctx = enrich_context(load_settings(geoip_city_db=""), None)
    results = [process(r.value, ctx) for r in await read_records(unique_topic)]
    assert len(results) == 300
    assert all(isinstance(r, Enriched) for r in results)


async def test_unreachable_broker_fails_with_a_clear_message(unique_topic: str) -> None:
    done = await produce("127.0.0.1:1", unique_topic, "--synthetic", "--count", "10")

    assert done.returncode == 1
    assert b"cannot reach Kafka at 127.0.0.1:1" in done.stderr


async def test_interrupt_flushes_and_prints_the_summary(
    bootstrap: str, unique_topic: str, read_records: ReadRecords
) -> None:
    argv = produce_argv(
        "--kafka-brokers", bootstrap, "--input-topics", unique_topic, "--synthetic", "--rate", "400"
    )
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=clean_env())
    assert proc.stderr is not None
    # Wait for the first progress line (non-terminal: one line, then every 5 s).
    first = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), TIMEOUT)
    assert first.startswith(b"sent "), first
    proc.send_signal(signal.SIGINT)
    _, rest = await asyncio.to_thread(proc.communicate, timeout=TIMEOUT)

    assert proc.returncode == 130, rest.decode()
    summary = rest.decode().strip().splitlines()[-1]
    assert summary.startswith("interrupted: "), summary
    sent = int(summary.removeprefix("interrupted: ").split()[0].replace(",", ""))
    assert sent > 0
    # Every message it reports as sent is in the topic, and nothing else.
    assert len(await read_records(unique_topic)) == sent
