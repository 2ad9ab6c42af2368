"""``grayscope worker``: run the Faust worker with the grayscope app."""

from __future__ import annotations

import argparse
import asyncio
import gc

import faust

from agents.app import create_app
from agents.runtime import Runtime
from pipeline.config import Settings
from pipeline.errors import GrayscopeError
from pipeline.kafka_options import check_login, topic_replicas
from pipeline.logs import logging_config

# A batch allocates a few hundred thousand short-lived objects; with CPython's
# default gen0 threshold (700) the collector runs hundreds of times per batch and
# each older-generation pass walks every long-lived object (tables, caches).
GC_THRESHOLDS = (100_000, 50, 100)


def faust_worker(app: faust.App, settings: Settings) -> faust.Worker:
    """Faust's worker for the app, logging JSON lines at ``GRAYSCOPE_LOG_LEVEL``."""
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level),
        override_logging=True,
    )
    # At WARNING and above Faust keeps a terminal progress spinner, and for its handler
    # sets the root logger to DEBUG: every debug message of every library (aiokafka's
    # per request and per send, gRPC's, Faust's) was then built into a LogRecord that
    # no handler wrote (measured: ~0.8 % of the worker's samples at full speed;
    # bench/README.md, "Session 17"). The worker writes JSON lines, not a terminal UI.
    worker.spinner = None
    return worker


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    gc.set_threshold(*GC_THRESHOLDS)
    runtime = Runtime(settings)  # fails fast on bad GeoIP paths etc., before Faust starts
    # A refused login or certificate is a configuration error: say which setting, exit.
    asyncio.run(check_login(settings.kafka))
    app = create_app(settings, runtime, topic_replicas=asyncio.run(topic_replicas(settings.kafka)))
    worker = faust_worker(app, settings)
    try:
        worker.execute_from_commandline()  # handles SIGTERM/SIGINT: graceful stop
    except SystemExit:
        # The app crashed on one of grayscope's own errors (a consumer group Kafka refused,
        # rejected store credentials): the command exits as that error says (a ConfigError
        # with 2). The worker's log has already named it.
        if isinstance(app.crash_reason, GrayscopeError):
            raise app.crash_reason from None
        raise
    return 0
