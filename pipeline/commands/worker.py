"""``grayscope worker``: run the Faust worker with the grayscope app."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
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

# glibc's malloc returns the top of its heap to the kernel once more than its trim
# threshold is free (128 KiB, raised with each large free), and maps every allocation
# over its mmap threshold afresh: a batch's megabytes of bulk body, documents and
# spans, freed after delivery, came back as page faults on fresh pages in the next
# batch (0.35 minor faults per event on the main thread; the kernel's page clearing
# and fault handling ~1.1 µs per event of the worker's CPU; bench/README.md,
# "Session 17"). Fixed thresholds keep up to this much free heap mapped.
MALLOC_TRIM_THRESHOLD = 256 * 1024 * 1024
MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_heap() -> bool:
    """Set glibc's malloc thresholds (above); False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
        and mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    )


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
    keep_freed_heap()
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
