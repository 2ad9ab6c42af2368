"""One typed error tree for grayscope: every exception it raises on purpose.

::

    GrayscopeError
    ├── ConfigError                  invalid or missing setting (names it); exit code 2
    │   └── GeoIPDatabaseError       a GeoIP database missing, unreadable, wrong type
    ├── RejectedInput                one input line is refused (reason, detail); the core
    │                                turns it into a dead letter, it never escapes
    ├── SinkError                    a sink could not deliver
    │   ├── StoreUnavailable         retriable: unreachable, timeout, 408/429/5xx
    │   ├── StoreRejected            the store refuses for good (auth, bad request)
    │   ├── DeadLetterError          retriable: the dead-letter topic is unwritable
    │   └── ExportError              retriable: spans not delivered
    │       └── ExportRequestFailed  one export request; retriable per answer
    ├── ConsumerGroupError           Kafka refused the worker's consumer group membership for
    │                                good (authorization, a member of another kind): it stops
    ├── ServiceUnavailable           retriable: a grayscope service could not be read
    │   └── CanaryUnavailable        a worker's /canary page
    ├── CommandError                 a command failed for good
    │   ├── ProduceError             Kafka unreachable or the producer failed
    │   └── KibanaImportError        Kibana unreachable or refused the import
    ├── ServiceError                 a local service (dev tooling: grayscope stack, the
    │   │                            embedded stand-ins) could not be fetched, started, reached
    │   ├── EmbeddedServiceError     an embedded stand-in could not be started
    │   └── StoreHTTPError           a local store answered a helper request with an error
    └── ShutdownInterrupted          a batch abandoned at shutdown; offsets stay uncommitted

``retriable`` is what callers decide on: the store sink, the dead-letter sink,
the worker's start-up and the OTLP exporter wait and try the same thing again
when it is true, and give up on (or dead-letter) the item when it is false.
Library exceptions are mapped to this tree at the boundary, with
``raise ... from exc``, so that the cause stays in the traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.core.model import Reason


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


class RejectedInput(GrayscopeError):
    """Raised inside the core by parsers; turned into a DeadLetter at the core's edge."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SinkError(GrayscopeError):
    """A sink could not deliver."""


class StoreUnavailable(SinkError):
    """The document store cannot be reached or is overloaded: try again later."""

    retriable = True


class StoreRejected(SinkError):
    """The store refused a request for good (auth, bad request): do not retry as is."""


class DeadLetterError(SinkError):
    """The dead-letter topic could not be written."""

    retriable = True


class ExportError(SinkError):
    """The OTLP exporter failed to deliver a batch of spans."""

    retriable = True


class ExportRequestFailed(ExportError):
    """One export request failed; ``retriable`` says whether to try it again."""

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(message, retriable=retriable)
        self.retry_after = retry_after


class ConsumerGroupError(GrayscopeError):
    """Kafka refused the worker's consumer group membership for good (a fatal JoinGroup or
    heartbeat error such as GroupAuthorizationFailed): the worker stops with the cause.
    A refusal that one setting causes is a ConfigError naming it instead
    (``pipeline.kafka_options.fatal_group_error``)."""


class ServiceUnavailable(GrayscopeError):
    """A grayscope service (a worker's HTTP pages) could not be read."""

    retriable = True


class CanaryUnavailable(ServiceUnavailable):
    """The worker's /canary page could not be read."""


class CommandError(GrayscopeError):
    """A command failed for good (after the retries it makes itself)."""


class ProduceError(CommandError):
    """Kafka could not be reached, or the producer failed for good."""


class KibanaImportError(CommandError):
    """Kibana could not be reached or refused the import."""


class ServiceError(GrayscopeError):
    """A local service of the dev stack could not be fetched, started or reached."""


class EmbeddedServiceError(ServiceError):
    """An embedded stand-in could not be started (binary missing, crashed, not ready)."""


class StoreHTTPError(ServiceError):
    """A local store (the dev stack's OpenSearch, the embedded stand-in) answered a
    helper request with an error status (status and decoded body attached)."""

    def __init__(self, message: str, status: int, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ShutdownInterrupted(GrayscopeError):
    """A batch was abandoned because the worker is stopping; its offsets stay uncommitted."""
