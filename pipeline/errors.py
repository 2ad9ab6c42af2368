"""One typed error tree for grayscope.

Every error carries ``retriable``: callers decide between "wait and try the
same thing again" and "give up on this item" from that flag alone. Library
exceptions are mapped at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class GrayscopeError(Exception):
    """Base of every error grayscope raises on purpose."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigError(GrayscopeError):
    """Invalid or missing configuration; names the offending setting."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class GeoIPDatabaseError(ConfigError):
    """A GeoIP database is missing, unreadable or of the wrong type."""


class SinkError(GrayscopeError):
    """A sink could not deliver."""


class StoreUnavailable(SinkError):
    """The document store cannot be reached or is overloaded: try again later."""

    retriable = True


class StoreRejected(SinkError):
    """The store refused a request for good (auth, bad request): do not retry as is."""


class ExportError(SinkError):
    """The OTLP exporter failed to deliver a batch of spans."""

    retriable = True


class DeadLetterError(SinkError):
    """The dead-letter topic could not be written."""

    retriable = True


class ShutdownInterrupted(GrayscopeError):
    """A batch was abandoned because the worker is stopping; its offsets stay uncommitted."""


class ServiceError(GrayscopeError):
    """A local service of the dev stack could not be fetched, started or reached."""
