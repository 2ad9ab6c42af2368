"""``grayscope setup``: install index templates, create topics, check every endpoint.

Idempotent: safe to run on every deploy. Prints one line per check and exits
non-zero if any required check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from urllib.parse import urlsplit

from pipeline.config import Settings
from pipeline.errors import GrayscopeError
from pipeline.kafka_options import (
    check_login,
    client_options,
    raise_topic_errors,
    replication_factor,
)
from pipeline.probe import connect_error


async def check_kafka(settings: Settings, partitions: int) -> str:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    await check_login(settings.kafka)
    admin = AIOKafkaAdminClient(**client_options(settings.kafka), request_timeout_ms=10_000)
    try:
        await admin.start()
    except Exception as exc:
        raise GrayscopeError(
            f"Kafka unreachable at {settings.kafka_brokers} (GRAYSCOPE_KAFKA_BROKERS): {exc}"
        ) from exc
    try:
        existing = set(await admin.list_topics())
        wanted = [*settings.input_topics, settings.dlq_topic]
        missing = [t for t in wanted if t not in existing]
        created = ""
        if missing:
            replicas = await replication_factor(admin, settings.kafka)
            response = await admin.create_topics(
                [
                    NewTopic(t, num_partitions=partitions, replication_factor=replicas)
                    for t in missing
                ]
            )
            raise_topic_errors(response)
            created = f" with {partitions} partitions x {replicas} replicas"
        return f"topics ok ({', '.join(wanted)}; created: {', '.join(missing) or 'none'}{created})"
    finally:
        await admin.close()


async def check_store(settings: Settings) -> str:
    from pipeline.sinks.elasticsearch.service import ElasticsearchService

    service = ElasticsearchService.from_settings(settings.store)
    try:
        info = await service.connect()
        await service.install_templates()
        return f"{info.distribution} {info.version} reachable; templates installed"
    finally:
        await service.close()


async def check_otlp(settings: Settings) -> str:
    url = urlsplit(settings.otlp_endpoint)
    host = url.hostname or "localhost"
    port = url.port or (443 if url.scheme == "https" else 80)
    error = await connect_error(host, port, timeout=5)
    if error is not None:
        raise GrayscopeError(f"OTLP endpoint {host}:{port} unreachable: {error}") from error
    return f"OTLP endpoint {host}:{port} reachable"


async def _run(settings: Settings, partitions: int) -> int:
    checks = [("kafka", check_kafka(settings, partitions))]
    if settings.es_hosts():
        checks.append(("store", check_store(settings)))
    if settings.otlp_endpoint:
        checks.append(("otlp", check_otlp(settings)))
    failed = 0
    for name, check in checks:
        try:
            print(f"{name:6} ok    {await check}")
        except GrayscopeError as exc:
            failed += 1
            print(f"{name:6} FAIL  {exc}")
    return 1 if failed else 0


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partitions", type=int, default=6, help="partitions for topics setup creates (default 6)"
    )


def run_setup(args: argparse.Namespace, settings: Settings) -> int:
    code = asyncio.run(_run(settings, getattr(args, "partitions", 6)))
    sys.stdout.flush()
    return code
