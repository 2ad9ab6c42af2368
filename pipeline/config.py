"""The one validated configuration of grayscope.

Every setting is an environment variable with the ``GRAYSCOPE_`` prefix and a
CLI flag of the same name (``GRAYSCOPE_ES_URL`` = ``--es-url``). Nothing else
in grayscope reads ``os.environ``. Secrets are ``SecretStr`` so they never
show up in reprs or logs.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.core.enrich import EnrichContext, GeoLookup
from pipeline.core.extract import gray
from pipeline.core.extract.client_ip import DEFAULT_TRUSTED_PROXIES, TrustedProxies
from pipeline.core.extract.path_group import PathRules
from pipeline.credentials import redact_url
from pipeline.errors import ConfigError

CommaList = Annotated[list[str], NoDecode]
SectionT = TypeVar("SectionT")


class ConsumerMode(StrEnum):
    BATCH = "batch"
    STREAM = "stream"


class EsMode(StrEnum):
    DATA_STREAM = "data_stream"
    INDEX = "index"


class WhenFull(StrEnum):
    """What span export does when its queue is full (Vector's buffer ``when_full``)."""

    DROP_NEWEST = "drop_newest"  # drop the spans that do not fit; the worker never waits
    BLOCK = "block"  # the worker waits for room: consumption slows to the trace backend's pace


def bundled_city_db() -> str:
    """Path of the demo GeoLite2-City database shipped by `maxminddb-geolite2`, or ''."""
    try:
        from geolite2 import geolite2_database  # type: ignore[import-not-found]
    except ImportError:
        try:
            import geolite2  # type: ignore[import-not-found]
        except ImportError:
            return ""
        candidate = Path(geolite2.__file__).with_name("GeoLite2-City.mmdb")
        return str(candidate) if candidate.exists() else ""
    return str(geolite2_database())


class Settings(BaseSettings):
    """grayscope settings; see the README's configuration table.

    ``repr()`` hides secrets (SecretStr) and URL credentials; log ``redacted()``.
    """

    model_config = SettingsConfigDict(
        env_prefix="GRAYSCOPE_", extra="forbid", validate_default=True, frozen=True
    )

    # --- Kafka -----------------------------------------------------------
    kafka_brokers: str = Field(
        "localhost:9092", description="Kafka bootstrap servers (comma list)."
    )
    input_topics: CommaList = Field(
        default_factory=lambda: ["access-logs"], description="Topics to consume (comma list)."
    )
    dlq_topic: str = Field("access-logs-dlq", description="Dead-letter topic.")
    consumer_group: str = Field("grayscope", description="Kafka consumer group / Faust app id.")
    kafka_security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str = Field(
        "PLAIN", description="SASL mechanism (PLAIN, SCRAM-SHA-256/512)."
    )
    kafka_sasl_username: str = Field("", description="SASL user name.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (secret).")
    kafka_ssl_ca_file: str = Field(
        "",
        description="PEM file of the CA certificates that signed the brokers' certificates "
        "(SSL, SASL_SSL); empty: the system's trust store.",
    )
    kafka_topic_replication_factor: int = Field(
        -1,
        ge=-1,
        le=32,
        description="Replication factor of the topics `grayscope setup` creates; -1: the "
        "cluster's `default.replication.factor`.",
    )
    kafka_session_timeout: float = Field(
        10.0,
        ge=1,
        le=300,
        description="Consumer group session timeout in seconds: how fast a dead worker's "
        "partitions move to the others (some brokers also delay a first join by half of it). "
        "Must lie within the brokers' group.min.session.timeout.ms and "
        "group.max.session.timeout.ms (Kafka's defaults: 6 and 1800 s); a worker the broker "
        "refuses exits with a configuration error naming this setting.",
    )
    kafka_rebalance_timeout: float = Field(
        60.0,
        ge=1,
        le=600,
        description="Seconds a rebalance waits for members to rejoin (a worker finishes its "
        "in-flight batch first, so allow for a slow store).",
    )
    kafka_check_crcs: bool = Field(
        True,
        description="Verify the CRC32C of every fetched record batch (Kafka's Java consumer "
        "checks, librdkafka's `check.crcs` does not by default). The worker's C reader "
        "checks it with SSE4.2's `crc32` instruction where the CPU has it: ~0.1 µs of CPU "
        "per 600-byte record, against ~0.4 µs for aiokafka's table in software, which checks "
        'the batches C leaves (bench/README.md, "Session 23"). A batch that fails the check '
        "is not handed on "
        "(aiokafka raises CorruptRecordException and fetches it again); unchecked, corruption "
        "on the wire or on a broker's disk goes unnoticed by the consumer.",
    )
    batch_size: int = Field(
        5000,
        ge=1,
        le=100_000,
        description="Messages per batch (stream.take) and so documents per bulk request at "
        "most: a store spends less CPU per document in bigger bulks (bench/README.md).",
    )
    batch_timeout: float = Field(
        0.5, gt=0, le=60, description="Seconds to wait for a batch to fill before flushing it."
    )

    consumer_mode: ConsumerMode = Field(
        ConsumerMode.BATCH,
        description="batch: input topics are handed to the pipeline a fetch at a time inside "
        "Faust's consumer (fast path); stream: stock Faust agent with stream.take_events.",
    )
    batch_concurrency: int = Field(
        4,
        ge=1,
        le=16,
        description="Batches in flight at once (enrich some while others are stored); each holds "
        "its offsets uncommitted until stored. Four keep a store busy that takes several bulk "
        "requests at once (OpenSearch: more documents/s, less CPU each than with two; "
        'bench/README.md, "Session 15"). Each delivered batch hands its spans to the OTLP '
        "queue at once: keep batch_size x batch_concurrency well inside otlp_queue_size.",
    )

    # --- Elasticsearch / OpenSearch --------------------------------------
    es_url: str = Field(
        "http://localhost:9200",
        description="Elasticsearch or OpenSearch URL(s), comma list; empty disables the sink.",
    )
    es_mode: EsMode = Field(
        EsMode.DATA_STREAM,
        description="data_stream -> logs-grayscope.access-default; "
        "index -> daily grayscope-access-YYYY.MM.DD (from @timestamp).",
    )
    es_api_key: SecretStr = Field(SecretStr(""), description="Elasticsearch API key (secret).")
    es_username: str = Field("", description="Basic-auth user name.")
    es_password: SecretStr = Field(SecretStr(""), description="Basic-auth password (secret).")
    es_ca_certs: str = Field("", description="CA bundle for TLS verification.")
    es_verify_certs: bool = Field(True, description="Verify the store's TLS certificate.")
    es_request_timeout: float = Field(30.0, gt=0, description="Per-request timeout in seconds.")
    es_retry_initial: float = Field(0.2, gt=0, description="First retry backoff in seconds.")
    es_retry_max: float = Field(
        30.0, gt=0, description="Backoff cap in seconds (retries never stop)."
    )
    es_install_templates: bool = Field(
        True, description="Install index/component templates when the worker starts."
    )
    es_bulk_max_bytes: int = Field(
        10_000_000,
        ge=1,
        description="Largest bulk request body in bytes: a batch whose documents are more goes "
        "to the store as several requests, one after the other (a document bigger than this "
        "alone). Vector's elasticsearch sink sends at most 10 MB a request too; Amazon "
        "OpenSearch Service refuses bodies over 10 MiB on its smaller instance types.",
    )

    # --- OTLP ------------------------------------------------------------
    otlp_endpoint: str = Field(
        "",
        description="OTLP traces endpoint: http://host:4317 (gRPC) or http://host:4318/v1/traces "
        "(HTTP/protobuf); empty disables span export.",
    )
    otlp_headers: str = Field("", description="Extra OTLP headers, k=v comma list (secret values).")
    otlp_queue_size: int = Field(
        50_000,
        ge=1,
        description="Spans buffered before new ones are dropped (or waited for: "
        "otlp_when_full). A delivered batch queues its spans at once: in drop_newest mode the "
        "worker warns at start when batch_size x batch_concurrency is more than half of it.",
    )
    otlp_batch_size: int = Field(512, ge=1, description="Spans per export request.")
    otlp_max_request_bytes: int = Field(
        4_000_000,
        ge=1024,
        description="Largest export request in bytes: a batch of spans that would be larger "
        "goes out in several requests. gRPC servers refuse messages over 4 MiB (4,194,304 "
        "bytes) unless configured otherwise, the OpenTelemetry Collector's and Jaeger's OTLP "
        "receivers included: keep it below the receiver's limit. A single span larger than "
        "this goes alone (and is dropped if the receiver refuses it).",
    )
    otlp_concurrent_exports: int = Field(
        4, ge=1, description="Export requests in flight at once (each up to a batch of spans)."
    )
    otlp_max_retries: int = Field(
        3, ge=0, description="Retries per export request before dropping it."
    )
    otlp_timeout: float = Field(
        5.0,
        gt=0,
        description="Per-export timeout in seconds (each try). Over gRPC a connection "
        "attempt may take as long: a collector that accepts connections but does not answer "
        "yet is waited for, as on an established connection; a refused one fails at once.",
    )
    otlp_when_full: WhenFull = Field(
        WhenFull.DROP_NEWEST,
        description="What happens to a delivered batch's spans when the OTLP queue is full "
        "(Vector's buffer when_full): drop_newest drops those that do not fit "
        "(spans_dropped_total{reason=queue_full}); block makes the worker wait for room before "
        "it acks the batch, so consumption slows to what the trace backend takes (documents "
        "are still stored first; the wait is counted in span_queue_blocked_seconds_total). "
        "Either way spans drop after otlp_max_retries failed exports and at shutdown.",
    )
    jaeger_url: str = Field(
        "",
        description="Jaeger query service base URL (e.g. http://localhost:16686): where "
        "`grayscope demo` and the docs search spans by gray.id; the worker does not use it.",
    )

    # --- GeoIP -------------------------------------------------------------
    geoip_city_db: str = Field(
        default_factory=bundled_city_db,
        description="MaxMind City .mmdb; default: the bundled demo database; empty disables geo.",
    )
    geoip_asn_db: str = Field("", description="MaxMind ASN .mmdb; empty disables AS lookups.")
    geoip_cache_size: int = Field(
        65_536,
        ge=0,
        description="GeoIP LRU cache entries: one per address, and one per /24 (IPv4) or /48 "
        "(IPv6) network the databases answer as a whole (City+ASN; 0 = no cache).",
    )
    geoip_reload_interval: float = Field(
        10.0, ge=0, description="Seconds between checks for a replaced database file (0 = never)."
    )

    # --- Extraction rules ------------------------------------------------
    trusted_proxies: CommaList = Field(
        default_factory=lambda: DEFAULT_TRUSTED_PROXIES.split(","),
        description="CIDRs whose X-Forwarded-For entries are believed.",
    )
    gray_id_headers: CommaList = Field(
        default_factory=lambda: ["x-abtest-id", "x-gray-id"],
        description="Headers carrying the gray id, in precedence order.",
    )
    gray_id_header_pattern: str = Field(r"^[a-z0-9]{8,16}$", description="Valid header gray id.")
    gray_id_query_arg: str = Field("abt", description="Query arg carrying the gray id.")
    gray_id_query_pattern: str = Field(r"^[a-z0-9]{4,12}$", description="Valid query gray id.")
    canary_header: str = Field("x-go-stage", description="Header that marks a canary request.")
    canary_header_value: str = Field("canary", description="Its canary value.")
    canary_cookie: str = Field("go_canary", description="Cookie that marks a canary request.")
    canary_cookie_value: str = Field("1", description="Its canary value.")
    canary_subset: str = Field("canary", description="Istio subset name of the canary.")
    version_query_arg: str = Field("v", description="Query arg carrying the version.")
    version_subset_pattern: str = Field(r"^v\d+", description="Istio subsets that are versions.")
    path_group_depth: int = Field(
        2, ge=1, le=10, description="Default path group: first N segments."
    )
    path_rules: str = Field(
        "",
        description="Path group rules: JSON list or @file of {match (regex), group, route}; "
        "first match wins, the default applies otherwise.",
    )
    service_name: str = Field(
        "", description="service.name; empty: derived from the upstream cluster, then authority."
    )
    include_original: bool = Field(False, description="Keep the raw line in event.original.")
    max_message_bytes: int = Field(
        1_048_576, ge=256, description="Larger messages are dead-lettered."
    )

    # --- Canary analysis ---------------------------------------------------
    canary_enabled: bool = Field(
        True, description="Judge canary against stable per path group (tables, verdicts)."
    )
    canary_window: int = Field(
        60, ge=1, le=86_400, description="Tumbling window size in seconds (event time)."
    )
    canary_expires: float = Field(
        0.0,
        ge=0,
        description="Seconds a window is kept; older events are late and ignored "
        "(0 = ten windows).",
    )
    canary_interval: float = Field(
        10.0, gt=0, description="Seconds between verdict evaluations; changes are published."
    )
    canary_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Chance of any false rollback over a whole rollout, all path groups "
        "and metrics together (anytime-valid: evidence against 1/alpha).",
    )
    canary_min_samples: int = Field(
        100, ge=1, description="Canary requests a path group needs before promote (exposure)."
    )
    canary_latency_threshold_ms: float = Field(
        200.0,
        ge=0,
        description="Smallest canary p95 increase worth a rollback (needs evidence as well); "
        "promote needs the p95 increase bounded below it.",
    )
    canary_psi0: float = Field(
        1.1,
        ge=1.0,
        le=10.0,
        description="Null 5xx rate ratio: evidence is against a canary/stable ratio above it.",
    )
    canary_promote_error_margin: float = Field(
        0.005,
        gt=0,
        lt=1,
        description="Promote needs the canary's 5xx rate bounded below stable's plus this.",
    )
    canary_promote_ratio: float = Field(
        1.5,
        gt=1.0,
        le=10.0,
        description="Promote needs the 5xx rate ratio of all path groups together (the "
        "rollback's scale) bounded below this.",
    )
    canary_promote_error_floor: float = Field(
        0.0001,
        ge=0,
        lt=1,
        description="Errors too rare to bound that ratio: promote needs the canary's 5xx "
        "rate over all path groups bounded below this instead.",
    )
    canary_promote_error_evidence: float = Field(
        1.0,
        ge=1.0,
        description="Promote needs the path group's own 5xx evidence (its rollback e-value) "
        "at most this: no lean towards a regression of the group alone, which pooling "
        "dilutes (a group without 5xx stays at 1).",
    )
    canary_warmup_windows: int = Field(
        1, ge=0, description="Complete windows a rollout needs before promote or insufficient_data."
    )
    canary_horizon_seconds: float = Field(
        3600.0,
        gt=0,
        description="insufficient_data when a decision needs more canary traffic than this "
        "long at the current rate.",
    )
    canary_rollout_idle_seconds: float = Field(
        1800.0,
        gt=0,
        description="A path group without canary traffic this long ends its rollout "
        "(its evidence and a sticky rollback are cleared).",
    )
    canary_topic: str = Field(
        "grayscope-canary-verdicts", description="Kafka topic the verdicts are published to."
    )
    canary_partitions: int = Field(
        1,
        ge=1,
        le=1024,
        description="Partitions of <group>-canary-aggregates and the canary changelogs "
        "(fixed once created).",
    )
    canary_funnels: str = Field(
        "",
        description="Conversion funnels judged canary against stable: JSON list or @file of "
        '{name, steps: [{path_group | route | path (regex), method, status_class ("2xx")}], '
        'user_key ("cookie:NAME", "header:NAME" or "client_ip"), window_seconds (default '
        "600: time from one step to the next), min_drop (smallest conversion drop worth a "
        "rollback, default 0), max_users (users held per funnel, default 100000)}; "
        "empty: no funnels.",
    )

    # --- Request metrics (worker /metrics) -----------------------------------
    request_metrics: bool = Field(
        True,
        description="Count the access logs' requests on /metrics (grayscope_http_requests_total, "
        "grayscope_http_request_duration_seconds, grayscope_canary_verdict).",
    )
    metrics_max_path_groups: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Path groups with their own label on the request metrics (first seen "
        "first); the rest are counted as `other`.",
    )
    metrics_max_versions: int = Field(
        20,
        ge=1,
        le=10_000,
        description="Versions with their own label on the request metrics (first seen first); "
        "the rest, and values not shaped like a version, are counted as `other`.",
    )
    metrics_label_idle_seconds: float = Field(
        3600.0,
        ge=0,
        description="When a cap is full, a path group or version unseen this long gives its "
        "place (and drops its series) to a new one; 0 = never.",
    )

    # --- Kibana (for `grayscope kibana import`) ---------------------------
    kibana_url: str = Field(
        "http://localhost:5601", description="Kibana base URL (including any base path)."
    )
    kibana_username: str = Field("", description="Kibana basic-auth user name.")
    kibana_password: SecretStr = Field(
        SecretStr(""), description="Kibana basic-auth password (secret)."
    )
    kibana_api_key: SecretStr = Field(
        SecretStr(""), description="Kibana API key, base64 id:key (secret; wins over basic auth)."
    )

    # --- Operability -------------------------------------------------------
    web_host: str = Field(
        "0.0.0.0", description="Worker web server bind address (/metrics, /healthz)."
    )
    web_port: int = Field(6066, ge=0, le=65535, description="Worker web server port.")
    log_level: str = Field("info", description="Log level.")
    shutdown_grace: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM, seconds the batch in flight may take to finish; after that "
        "it is abandoned uncommitted (re-consumed by the next owner).",
    )
    data_dir: str = Field(
        "",
        description="Faust state directory (tables); empty: a per-process temporary "
        "directory, removed when the process exits.",
    )

    @field_validator("input_topics", "trusted_proxies", "gray_id_headers", mode="before")
    @classmethod
    def _split_comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("gray_id_headers", mode="after")
    @classmethod
    def _lower_headers(cls, value: list[str]) -> list[str]:
        return [v.lower().replace("_", "-") for v in value]

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _valid_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator(
        "gray_id_header_pattern", "gray_id_query_pattern", "version_subset_pattern", mode="after"
    )
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @field_validator("path_rules", mode="after")
    @classmethod
    def _valid_path_rules(cls, value: str) -> str:
        load_path_rules(value)
        return value

    @field_validator("canary_funnels", mode="after")
    @classmethod
    def _valid_funnels(cls, value: str) -> str:
        load_funnels(value)
        return value

    @field_validator("kafka_security_protocol", mode="after")
    @classmethod
    def _valid_protocol(cls, value: str) -> str:
        value = value.upper()
        if value not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
            raise ValueError("must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        return value

    @field_validator("kafka_sasl_mechanism", mode="after")
    @classmethod
    def _valid_mechanism(cls, value: str) -> str:
        value = value.upper()
        if value not in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}:
            raise ValueError("must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        return value

    @field_validator("kafka_topic_replication_factor", mode="after")
    @classmethod
    def _valid_replication_factor(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (the cluster's default) or at least 1")
        return value

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for name, value in super().__repr_args__():
            yield (
                name,
                (",".join(redact_url(u) for u in self.es_hosts()) if name == "es_url" else value),
            )

    # --- typed sections (each component takes its own; see KafkaSettings) ----
    @property
    def kafka(self) -> KafkaSettings:
        return section_of(self, KafkaSettings)

    @property
    def store(self) -> StoreSettings:
        return section_of(self, StoreSettings)

    @property
    def otlp(self) -> OtlpSettings:
        return section_of(self, OtlpSettings)

    @property
    def dlq(self) -> DlqSettings:
        return section_of(self, DlqSettings)

    @property
    def geoip(self) -> GeoIPSettings:
        return section_of(self, GeoIPSettings)

    @property
    def metrics(self) -> MetricsSettings:
        return section_of(self, MetricsSettings)

    @property
    def web(self) -> WebSettings:
        return section_of(self, WebSettings)

    @property
    def canary(self) -> CanarySettings:
        return section_of(self, CanarySettings)

    def es_hosts(self) -> list[str]:
        return [u.strip() for u in self.es_url.split(",") if u.strip()]

    def span_burst_warning(self) -> str | None:
        """Why spans may be dropped in bursts with these settings, or None.

        A delivered batch hands all its spans to the OTLP queue at once, so up to
        ``batch_size x batch_concurrency`` can arrive together; in ``drop_newest``
        mode more than the queue holds are dropped even when the trace backend keeps
        up on average (measured: batches of 5,000, four in flight, a 20,000-span
        queue: a fifth of the spans dropped; bench/README.md, "Session 11"). In
        ``block`` mode a burst waits for room instead of dropping: nothing to warn of.
        """
        if not self.otlp_endpoint or self.otlp_when_full is WhenFull.BLOCK:
            return None
        burst = self.batch_size * self.batch_concurrency
        if burst <= self.otlp_queue_size // 2:
            return None
        return (
            f"GRAYSCOPE_BATCH_SIZE x GRAYSCOPE_BATCH_CONCURRENCY = {burst:,} spans can reach "
            f"the OTLP queue at once, more than half of GRAYSCOPE_OTLP_QUEUE_SIZE "
            f"({self.otlp_queue_size:,}): spans will be dropped in bursts; raise the queue "
            f"to at least {2 * burst:,}, lower the batch settings, or set "
            f"GRAYSCOPE_OTLP_WHEN_FULL=block (the worker then waits for room instead)"
        )

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log (secrets masked)."""
        out = self.model_dump(mode="json")
        out["es_url"] = ",".join(redact_url(u) for u in self.es_hosts())
        for name, info in type(self).model_fields.items():
            if info.annotation is SecretStr:
                out[name] = "**********" if getattr(self, name).get_secret_value() else ""
        return out


# --- typed sections ------------------------------------------------------------
# The settings stay flat where users meet them (GRAYSCOPE_* variables, flags, the
# README table); components take their own typed section, never the whole Settings.
# Each section field reads the flat setting its metadata names (whose description
# documents it); ``Settings.kafka``, ``.store``, ... build them.


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Kafka connection, security and consumption (``GRAYSCOPE_KAFKA_*``, ``BATCH_*``)."""

    brokers: str = field(metadata={"setting": "kafka_brokers"})
    input_topics: tuple[str, ...] = field(metadata={"setting": "input_topics"})
    consumer_group: str = field(metadata={"setting": "consumer_group"})
    security_protocol: str = field(metadata={"setting": "kafka_security_protocol"})
    sasl_mechanism: str = field(metadata={"setting": "kafka_sasl_mechanism"})
    sasl_username: str = field(metadata={"setting": "kafka_sasl_username"})
    sasl_password: SecretStr = field(metadata={"setting": "kafka_sasl_password"})
    ssl_ca_file: str = field(metadata={"setting": "kafka_ssl_ca_file"})
    topic_replication_factor: int = field(metadata={"setting": "kafka_topic_replication_factor"})
    session_timeout: float = field(metadata={"setting": "kafka_session_timeout"})
    rebalance_timeout: float = field(metadata={"setting": "kafka_rebalance_timeout"})
    check_crcs: bool = field(metadata={"setting": "kafka_check_crcs"})
    batch_size: int = field(metadata={"setting": "batch_size"})
    batch_timeout: float = field(metadata={"setting": "batch_timeout"})
    consumer_mode: ConsumerMode = field(metadata={"setting": "consumer_mode"})
    batch_concurrency: int = field(metadata={"setting": "batch_concurrency"})


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The Elasticsearch/OpenSearch sink (``GRAYSCOPE_ES_*``)."""

    url: str = field(metadata={"setting": "es_url"})
    mode: EsMode = field(metadata={"setting": "es_mode"})
    api_key: SecretStr = field(metadata={"setting": "es_api_key"})
    username: str = field(metadata={"setting": "es_username"})
    password: SecretStr = field(metadata={"setting": "es_password"})
    ca_certs: str = field(metadata={"setting": "es_ca_certs"})
    verify_certs: bool = field(metadata={"setting": "es_verify_certs"})
    request_timeout: float = field(metadata={"setting": "es_request_timeout"})
    retry_initial: float = field(metadata={"setting": "es_retry_initial"})
    retry_max: float = field(metadata={"setting": "es_retry_max"})
    install_templates: bool = field(metadata={"setting": "es_install_templates"})
    bulk_max_bytes: int = field(metadata={"setting": "es_bulk_max_bytes"})

    def hosts(self) -> list[str]:
        """The configured URLs (a comma list); none: the sink is off."""
        return [u.strip() for u in self.url.split(",") if u.strip()]


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """The OTLP span exporter (``GRAYSCOPE_OTLP_*``)."""

    endpoint: str = field(metadata={"setting": "otlp_endpoint"})
    headers: str = field(metadata={"setting": "otlp_headers"})
    queue_size: int = field(metadata={"setting": "otlp_queue_size"})
    batch_size: int = field(metadata={"setting": "otlp_batch_size"})
    max_request_bytes: int = field(metadata={"setting": "otlp_max_request_bytes"})
    concurrent_exports: int = field(metadata={"setting": "otlp_concurrent_exports"})
    max_retries: int = field(metadata={"setting": "otlp_max_retries"})
    timeout: float = field(metadata={"setting": "otlp_timeout"})
    when_full: WhenFull = field(metadata={"setting": "otlp_when_full"})


@dataclass(frozen=True, slots=True)
class DlqSettings:
    """The dead-letter topic (``GRAYSCOPE_DLQ_TOPIC``)."""

    topic: str = field(metadata={"setting": "dlq_topic"})


@dataclass(frozen=True, slots=True)
class GeoIPSettings:
    """GeoIP databases and their cache (``GRAYSCOPE_GEOIP_*``)."""

    city_db: str = field(metadata={"setting": "geoip_city_db"})
    asn_db: str = field(metadata={"setting": "geoip_asn_db"})
    cache_size: int = field(metadata={"setting": "geoip_cache_size"})
    reload_interval: float = field(metadata={"setting": "geoip_reload_interval"})


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Request metrics on ``/metrics`` (``GRAYSCOPE_REQUEST_METRICS``, ``METRICS_*``)."""

    enabled: bool = field(metadata={"setting": "request_metrics"})
    max_path_groups: int = field(metadata={"setting": "metrics_max_path_groups"})
    max_versions: int = field(metadata={"setting": "metrics_max_versions"})
    label_idle_seconds: float = field(metadata={"setting": "metrics_label_idle_seconds"})


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The worker's web server: ``/metrics``, ``/healthz``, ``/canary`` (``GRAYSCOPE_WEB_*``)."""

    host: str = field(metadata={"setting": "web_host"})
    port: int = field(metadata={"setting": "web_port"})


@dataclass(frozen=True, slots=True)
class CanarySettings:
    """The canary analysis: windows, the verdict's statistics, funnels (``GRAYSCOPE_CANARY_*``).

    ``funnels`` is the raw setting (validated at start-up by ``load_funnels``).
    """

    enabled: bool = field(metadata={"setting": "canary_enabled"})
    window: int = field(metadata={"setting": "canary_window"})
    expires: float = field(metadata={"setting": "canary_expires"})
    interval: float = field(metadata={"setting": "canary_interval"})
    alpha: float = field(metadata={"setting": "canary_alpha"})
    min_samples: int = field(metadata={"setting": "canary_min_samples"})
    latency_threshold_ms: float = field(metadata={"setting": "canary_latency_threshold_ms"})
    psi0: float = field(metadata={"setting": "canary_psi0"})
    promote_error_margin: float = field(metadata={"setting": "canary_promote_error_margin"})
    promote_ratio: float = field(metadata={"setting": "canary_promote_ratio"})
    promote_error_floor: float = field(metadata={"setting": "canary_promote_error_floor"})
    promote_error_evidence: float = field(metadata={"setting": "canary_promote_error_evidence"})
    warmup_windows: int = field(metadata={"setting": "canary_warmup_windows"})
    horizon_seconds: float = field(metadata={"setting": "canary_horizon_seconds"})
    rollout_idle_seconds: float = field(metadata={"setting": "canary_rollout_idle_seconds"})
    topic: str = field(metadata={"setting": "canary_topic"})
    partitions: int = field(metadata={"setting": "canary_partitions"})
    funnels: str = field(metadata={"setting": "canary_funnels"})


#: Every section and the Settings property that builds it.
SECTIONS: dict[str, type[Any]] = {
    "kafka": KafkaSettings,
    "store": StoreSettings,
    "otlp": OtlpSettings,
    "dlq": DlqSettings,
    "geoip": GeoIPSettings,
    "metrics": MetricsSettings,
    "web": WebSettings,
    "canary": CanarySettings,
}


def section_of(settings: Settings, cls: type[SectionT]) -> SectionT:
    """The typed section ``cls`` of the flat settings."""
    values: dict[str, Any] = {}
    for item in fields(cls):  # type: ignore[arg-type]
        value = getattr(settings, item.metadata["setting"])
        values[item.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def load_path_rules(spec: str) -> list[dict[str, str]]:
    """Parse the ``path_rules`` setting (JSON text or ``@file``) into rule dicts."""
    if not spec.strip():
        return []
    try:
        text = Path(spec[1:]).read_bytes() if spec.startswith("@") else spec.encode()
    except OSError as exc:
        raise ValueError(f"cannot read path rules file: {exc}") from exc
    rules = orjson.loads(text)
    if not isinstance(rules, list):
        raise ValueError("path rules must be a JSON list")
    for rule in rules:
        if not isinstance(rule, dict) or not isinstance(rule.get("match"), str):
            raise ValueError("each path rule needs a string 'match' regex")
        try:
            re.compile(rule["match"])
        except re.error as exc:
            raise ValueError(f"path rule {rule['match']!r}: {exc}") from exc
        for key in ("group", "route"):
            if key in rule and not isinstance(rule[key], str):
                raise ValueError(f"path rule {key!r} must be a string")
    return rules


def load_funnels(spec: str) -> Any:
    """Parse the ``canary_funnels`` setting (JSON text or ``@file``) into funnel specs."""
    from pipeline.canary.funnel import parse_funnels  # the canary package owns the format

    if spec.startswith("@"):
        try:
            spec = Path(spec[1:]).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the funnels file: {exc}") from exc
    return parse_funnels(spec)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one CLI flag per setting, mirroring the environment variables."""
    group = parser.add_argument_group("settings (also GRAYSCOPE_<NAME> environment variables)")
    for name, info in Settings.model_fields.items():
        group.add_argument(
            flag_name(name),
            dest=f"setting_{name}",
            metavar=name.upper(),
            default=None,
            help=info.description,
        )


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from environment + CLI flags (flags win); ConfigError names the bad one."""
    values: dict[str, Any] = {
        name[len("setting_") :]: value
        for name, value in vars(args).items()
        if name.startswith("setting_") and value is not None
    }
    values.update(overrides)
    return load_settings(**values)


def load_settings(**values: Any) -> Settings:
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"][0] if first["loc"] else "settings"
        setting = f"GRAYSCOPE_{str(loc).upper()}"
        raise ConfigError(setting, first["msg"]) from exc


def enrich_context(settings: Settings, geoip: GeoLookup | None = None) -> EnrichContext:
    """The enrichment chain's lookup context from the settings (and an open GeoIP reader)."""
    rules = gray.GrayRules(
        id_headers=tuple(settings.gray_id_headers),
        id_header_pattern=re.compile(settings.gray_id_header_pattern),
        id_query_arg=settings.gray_id_query_arg.lower(),
        id_query_pattern=re.compile(settings.gray_id_query_pattern),
        canary_header=settings.canary_header.lower(),
        canary_header_value=settings.canary_header_value.lower(),
        canary_cookie=settings.canary_cookie,
        canary_cookie_value=settings.canary_cookie_value,
        canary_subset=settings.canary_subset,
        version_query_arg=settings.version_query_arg.lower(),
        version_subset_pattern=re.compile(settings.version_subset_pattern),
    )
    return EnrichContext(
        gray_rules=rules,
        path_rules=PathRules.from_config(
            load_path_rules(settings.path_rules), settings.path_group_depth
        ),
        proxies=TrustedProxies.from_cidrs(settings.trusted_proxies),
        geoip=geoip,
        service_name=settings.service_name or None,
        include_original=settings.include_original,
        max_message_bytes=settings.max_message_bytes,
    )


def _home_subdir(xdg_value: str | None, fallback: str, *parts: str) -> str:
    base = Path(xdg_value) if xdg_value else Path.home() / fallback
    return str(base.joinpath(*parts))


def default_cache_dir() -> str:
    """``${XDG_CACHE_HOME:-~/.cache}/grayscope``."""
    import os

    return _home_subdir(os.environ.get("XDG_CACHE_HOME"), ".cache", "grayscope")


def default_stack_dir() -> str:
    """``${XDG_STATE_HOME:-~/.local/state}/grayscope/stack``."""
    import os

    return _home_subdir(os.environ.get("XDG_STATE_HOME"), ".local/state", "grayscope", "stack")


class StackSettings(BaseSettings):
    """Settings of the local development stack (``grayscope stack``, the integration tests).

    Apart from :class:`Settings`: a worker never needs them.
    """

    model_config = SettingsConfigDict(env_prefix="GRAYSCOPE_", extra="ignore", frozen=True)

    cache_dir: str = Field(
        default_factory=default_cache_dir,
        description="Downloads and builds of the local stack's services (Maven jars, "
        "binaries), shared by every stack and test run: ${XDG_CACHE_HOME:-~/.cache}/grayscope.",
    )
    stack_dir: str = Field(
        default_factory=default_stack_dir,
        description="Where `grayscope stack up` keeps its services' data, logs and pid files "
        "(`--dir` overrides): ${XDG_STATE_HOME:-~/.local/state}/grayscope/stack.",
    )
    java_home: str = Field(
        "",
        description="JDK for the stack's Java services (Kafka, OpenSearch); empty: `java` on "
        "PATH. Needs Java 17 or newer.",
    )
    stack_otelcol: bool = Field(
        False,
        description="Also build the OpenTelemetry Collector (the peer in bench/otelcol.py) in "
        "`grayscope stack fetch`, and let its integration test build it when it is not in the "
        "cache (a Go build of minutes): off, `make test` builds nothing for it.",
    )
