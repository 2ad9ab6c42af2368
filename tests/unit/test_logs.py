"""The worker's logging configuration."""

from __future__ import annotations

import logging

import orjson

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
