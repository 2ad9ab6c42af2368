"""Structured (JSON lines) logging for the worker."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def logging_config(level: str) -> dict[str, Any]:
    """dictConfig for Faust's worker (``logging_config=``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # One line per bulk request / per failed attempt would drown the sink's own
        # rate-limited outage warnings.
        "loggers": {
            "elastic_transport": {"level": "ERROR"},
            # Its request tracer. The library makes it non-propagating, but
            # dictConfig resets the children of configured loggers to propagate;
            # with a handler reachable it then decodes every bulk request and
            # response body into a debug message nobody emits (~2 % of the
            # worker's time at full speed).
            "elastic_transport.node": {"level": "ERROR", "propagate": False},
        },
    }
