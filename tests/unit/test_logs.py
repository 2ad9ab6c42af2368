"""The worker's process settings: its logging configuration, its malloc thresholds."""

from __future__ import annotations

import logging
import platform

import orjson
import pytest

from agents.app import create_app
from pipeline.commands.worker import faust_worker, keep_freed_heap
from pipeline.config import load_settings
from pipeline.logs import JsonFormatter, logging_config


def test_elastic_transport_request_tracer_stays_unreachable() -> None:
    """With a handler reachable, elastic-transport decodes every bulk body for a debug line."""
    loggers = logging_config("info")["loggers"]
    assert loggers["elastic_transport.node"] == {"level": "ERROR", "propagate": False}
    assert loggers["elastic_transport"]["level"] == "ERROR"


def test_json_lines_carry_level_logger_message_and_extras() -> None:
    record = logging.LogRecord(
        "grayscope.x", logging.WARNING, __file__, 1, "hi %s", ("there",), None
    )
    record.batch = 7
    line = orjson.loads(JsonFormatter().format(record))
    assert line["level"] == "warning"
    assert line["logger"] == "grayscope.x"
    assert line["message"] == "hi there"
    assert line["batch"] == 7


def test_the_worker_keeps_the_root_logger_at_the_configured_level() -> None:
    """Faust's terminal spinner would set the root logger to DEBUG at WARNING and above:
    every library's debug message built into a record nobody writes."""
    settings = load_settings(
        consumer_group="orders-enrich", geoip_city_db="", es_url="", log_level="warning"
    )
    worker = faust_worker(create_app(settings), settings)
    root = logging.getLogger()
    saved = root.level
    try:
        root.setLevel(logging.WARNING)
        worker.on_setup_root_logger(root, logging.WARNING)  # what Faust calls after dictConfig
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_the_worker_keeps_freed_heap_mapped_on_glibc() -> None:
    """The worker's malloc thresholds (pipeline.commands.worker.keep_freed_heap) are set."""
    assert keep_freed_heap()
