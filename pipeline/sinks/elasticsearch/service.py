"""The HTTP side of the Elasticsearch/OpenSearch sink (the only I/O here).

Requests go through the transport of the official ``AsyncElasticsearch``
client (aiohttp nodes, TLS, node pool), but not through its API layer: that
layer rewrites media types to ``application/vnd.elasticsearch+json;
compatible-with=<client major>`` and insists on the ``X-Elastic-Product``
header, and OpenSearch (and the embedded osmem store) answer the former with
406 and never send the latter. So ``connect()`` asks ``GET /`` who is
serving, and every request then carries media types that server accepts:
plain JSON/NDJSON for OpenSearch (and Elasticsearch before 8), the
compatibility types of the *server's* major for Elasticsearch 8+.

Failures are mapped here, once: ``StoreUnavailable`` (retriable: connection
errors, timeouts, 408/429/5xx) and ``StoreRejected`` (not retriable:
401/403, wrong URL, not a search server).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from elastic_transport import (
    AiohttpHttpNode,
    ConnectionTimeout,
    HttpHeaders,
    SerializationError,
    Serializer,
    TlsError,
    TransportError,
)
from elastic_transport import (
    ConnectionError as TransportConnectionError,
)
from elasticsearch import AsyncElasticsearch

from pipeline.config import StoreSettings
from pipeline.credentials import authorization, redact_url
from pipeline.errors import ConfigError, SinkError, StoreRejected, StoreUnavailable
from pipeline.sinks.elasticsearch.classify import (
    AllItemsDone,
    RequestOutcome,
    classify_status,
    error_detail,
    read_all_done,
    response_text,
)
from schemas import component_templates, index_templates

logger = logging.getLogger(__name__)

OPENSEARCH = "opensearch"
ELASTICSEARCH = "elasticsearch"

# Only what the sink reads: keeps large bulk responses small to send and decode.
BULK_TARGET = "/_bulk?filter_path=errors,items.*.status,items.*.error"


@dataclass(slots=True, frozen=True)
class ServerInfo:
    """Who answered ``GET /``; ``major`` is 0 when the version is unknown."""

    distribution: str
    version: str
    major: int


@dataclass(slots=True, frozen=True)
class MediaTypes:
    accept: str
    json: str
    ndjson: str


PLAIN_MEDIA_TYPES = MediaTypes("application/json", "application/json", "application/x-ndjson")


def detect_server(body: Any) -> ServerInfo:
    """Flavour and version from a ``GET /`` body; ``ValueError`` if it is neither store."""
    if not isinstance(body, Mapping) or not isinstance(body.get("version"), Mapping):
        raise ValueError("GET / did not answer like Elasticsearch or OpenSearch")
    version = body["version"]
    number = str(version.get("number", ""))
    distribution = str(version.get("distribution", "")).lower()
    if distribution == OPENSEARCH or OPENSEARCH in str(body.get("tagline", "")).lower():
        distribution = OPENSEARCH
    else:
        distribution = ELASTICSEARCH
    major_text = number.partition(".")[0]
    major = int(major_text) if major_text.isdigit() else 0
    return ServerInfo(distribution, number, major)


def media_types_for(info: ServerInfo) -> MediaTypes:
    if info.distribution == ELASTICSEARCH and info.major >= 8:
        compat = f"; compatible-with={info.major}"
        return MediaTypes(
            f"application/vnd.elasticsearch+json{compat}",
            f"application/vnd.elasticsearch+json{compat}",
            f"application/vnd.elasticsearch+x-ndjson{compat}",
        )
    return PLAIN_MEDIA_TYPES


class _PassThroughJson(Serializer):
    """Bytes go out untouched (bodies are pre-serialised); responses decode with orjson,
    except a bulk answer whose items all succeeded: that is only counted
    (``classify.read_all_done``).

    Registered for every media type the store may answer with, so a proxy's
    HTML error page or an empty body never turns into a SerializationError
    that would hide the HTTP status: unparsable bodies come back as bytes.
    """

    mimetype: ClassVar[str] = "application/json"

    def loads(self, data: bytes) -> Any:
        if not data:
            return None
        done = read_all_done(data)
        if done is not None:
            return done
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return bytes(data)

    def dumps(self, data: Any) -> bytes:
        if isinstance(data, bytes):
            return data
        if isinstance(data, str):
            return data.encode()
        return orjson.dumps(data)


_SERIALIZER = _PassThroughJson()
_SERIALIZERS: dict[str, Serializer] = {
    mimetype: _SERIALIZER
    for mimetype in (
        "application/json",
        "application/x-ndjson",
        "application/vnd.elasticsearch+json",
        "application/vnd.elasticsearch+x-ndjson",
        "application/*",
        "text/*",
    )
}


class ElasticsearchService:
    """Connect, install templates, send bulk bodies; nothing else."""

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        api_key: str = "",
        username: str = "",
        password: str = "",
        ca_certs: str = "",
        verify_certs: bool = True,
        request_timeout: float = 30.0,
    ) -> None:
        if not hosts:
            raise ConfigError("GRAYSCOPE_ES_URL", "no Elasticsearch URL configured")
        self._hosts = [redact_url(h) for h in hosts]
        self._auth_kind = "api_key" if api_key else "basic" if username else "none"
        if api_key and username:
            raise ConfigError("GRAYSCOPE_ES_API_KEY", "set an API key or a user name, not both")
        self._auth = authorization(api_key=api_key, username=username, password=password)
        self._timeout = request_timeout
        options: dict[str, Any] = {"verify_certs": verify_certs}
        if ca_certs:
            options["ca_certs"] = ca_certs
        try:
            self._client = AsyncElasticsearch(
                list(hosts),
                node_class=AiohttpHttpNode,
                serializers=_SERIALIZERS,
                # The sink retries, with backoff and without limit; the transport
                # only moves on to the next node after a connection error.
                max_retries=len(hosts) - 1,
                retry_on_timeout=False,
                retry_on_status=(),
                request_timeout=request_timeout,
                **options,
            )
        except (ValueError, OSError) as exc:
            bad_ca = ca_certs and "cert" in str(exc).lower()
            setting = "GRAYSCOPE_ES_CA_CERTS" if bad_ca else "GRAYSCOPE_ES_URL"
            raise ConfigError(setting, f"cannot set up the Elasticsearch client: {exc}") from exc
        self._max_retries = len(hosts) - 1
        self.server: ServerInfo | None = None
        self._media = PLAIN_MEDIA_TYPES

    @classmethod
    def from_settings(cls, store: StoreSettings) -> ElasticsearchService:
        """Build from the store's settings section."""
        return cls(
            store.hosts(),
            api_key=store.api_key.get_secret_value(),
            username=store.username,
            password=store.password.get_secret_value(),
            ca_certs=store.ca_certs,
            verify_certs=store.verify_certs,
            request_timeout=store.request_timeout,
        )

    def __repr__(self) -> str:
        server = f"{self.server.distribution} {self.server.version}" if self.server else "unknown"
        return f"<ElasticsearchService hosts={self._hosts} auth={self._auth_kind} server={server}>"

    @property
    def hosts(self) -> list[str]:
        """The configured URLs, without credentials."""
        return list(self._hosts)

    async def connect(self) -> ServerInfo:
        """Ask ``GET /`` who is serving and pick the media types to speak."""
        status, body = await self._request("GET", "/")
        if status == 403:
            # A write-only API key may not read the root: assume Elasticsearch
            # and speak plain JSON, which every version accepts.
            logger.warning(
                "Elasticsearch: GET / is forbidden for these credentials; assuming "
                "Elasticsearch and plain JSON (%s)",
                error_detail(status, body),
            )
            info = ServerInfo(ELASTICSEARCH, "", 0)
        else:
            if classify_status(status) is not RequestOutcome.OK:
                raise self._error_for(status, body, "GET /")
            try:
                info = detect_server(body)
            except ValueError as exc:
                raise StoreRejected(
                    f"{self._hosts[0]} is not Elasticsearch or OpenSearch: {exc}"
                ) from exc
        self.server = info
        self._media = media_types_for(info)
        logger.info(
            "Elasticsearch: connected to %s %s at %s",
            info.distribution,
            info.version or "(version unknown)",
            ", ".join(self._hosts),
        )
        return info

    async def ping(self) -> bool:
        """True when the store answers ``GET /``; never raises.

        A 403 counts as alive: the credentials work, they just may not read the
        root (see ``connect``).
        """
        try:
            status, _ = await self._request("GET", "/")
        except (StoreUnavailable, StoreRejected):
            return False
        return 200 <= status < 300 or status == 403

    async def install_templates(self) -> None:
        """PUT the component templates, then the index templates (idempotent)."""
        await self._ensure_connected()
        for kind, templates in (
            ("_component_template", component_templates()),
            ("_index_template", index_templates()),
        ):
            for name, body in templates.items():
                target = f"/{kind}/{name}"
                status, response = await self._request("PUT", target, orjson.dumps(body))
                if classify_status(status) is not RequestOutcome.OK:
                    raise self._error_for(status, response, f"PUT {target}")
        logger.info("Elasticsearch: templates installed")

    async def bulk(self, body: bytes) -> tuple[int, dict[str, Any] | AllItemsDone]:
        """POST a ``_bulk`` body; returns ``(status, response)`` for 2xx, 400 and 413.

        Raises ``StoreUnavailable`` when the store is down or overloaded,
        ``StoreRejected`` when it refuses these credentials or this URL.
        """
        await self._ensure_connected()
        status, response = await self._request("POST", BULK_TARGET, body, ndjson=True)
        outcome = classify_status(status)
        if outcome is RequestOutcome.OK:
            if not isinstance(response, dict | AllItemsDone):
                raise StoreUnavailable(f"bulk answered {status} without a JSON object")
            return status, response
        if outcome is RequestOutcome.SPLIT:
            if isinstance(response, dict):
                return status, response
            return status, {"error": response_text(response)}
        raise self._error_for(status, response, "POST /_bulk")

    async def close(self) -> None:
        await self._client.close()

    async def _ensure_connected(self) -> None:
        if self.server is None:
            await self.connect()

    def _error_for(self, status: int, body: Any, what: str) -> SinkError:
        """The error for a non-2xx answer: retriable for 408/429/5xx, fatal otherwise."""
        detail = f"{what}: {error_detail(status, body)}"
        if classify_status(status) is RequestOutcome.RETRY:
            return StoreUnavailable(detail)
        if status in (401, 403):
            return StoreRejected(f"{detail} (check the Elasticsearch credentials and privileges)")
        return StoreRejected(detail)

    async def _request(
        self, method: str, target: str, body: bytes | None = None, *, ndjson: bool = False
    ) -> tuple[int, Any]:
        headers = HttpHeaders({"accept": self._media.accept})
        if body is not None:
            headers["content-type"] = self._media.ndjson if ndjson else self._media.json
        if self._auth is not None:
            headers["authorization"] = self._auth
        try:
            meta, response = await self._client.transport.perform_request(
                method,
                target,
                body=body,
                headers=headers,
                request_timeout=self._timeout,
                max_retries=self._max_retries,
                retry_on_status=(),
                retry_on_timeout=False,
            )
        except TlsError as exc:
            raise StoreUnavailable(f"{method} {target}: TLS error: {exc}") from exc
        except ConnectionTimeout as exc:
            raise StoreUnavailable(
                f"{method} {target}: no answer within {self._timeout:g} s"
            ) from exc
        except TransportConnectionError as exc:
            raise StoreUnavailable(f"{method} {target}: cannot connect: {exc}") from exc
        except SerializationError as exc:
            raise StoreUnavailable(f"{method} {target}: unreadable response: {exc}") from exc
        except TransportError as exc:
            raise StoreUnavailable(f"{method} {target}: {exc}") from exc
        return meta.status, response
