"""The demo's processes: a broker, a store, a trace backend, and the real worker.

Two sets of services: the embedded stand-ins (tansu for Kafka, osmem for the
Elasticsearch API, grayscope's own OTLP receiver for Jaeger; no Java, start in
well under a second), or with ``--real-stack`` Apache Kafka, OpenSearch and
Jaeger from :mod:`pipeline.dev.stack` (Java 17 and Go; the first run fetches
their jars and builds Jaeger). Results are labelled with what ran.

The worker is ``python -m pipeline.commands.main worker`` in a child process with its
settings in ``GRAYSCOPE_*`` variables, exactly as an operator would run it.
Every child gets its own session (a terminal Ctrl-C reaches only the demo,
which stops them in order) and dies with the demo if the demo is killed
(PR_SET_PDEATHSIG, the store's parent-pid watch): start them from the main
thread. :meth:`DemoServices.stop` is idempotent and safe on a half-started set.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from pipeline.config import Settings, StackSettings
from pipeline.dev.embedded.broker import EmbeddedBroker, create_topics
from pipeline.dev.embedded.otlp_receiver import OtlpReceiver
from pipeline.dev.embedded.ports import ChildProcess
from pipeline.dev.embedded.store import EmbeddedStore
from pipeline.dev.stack.jaeger import (
    JaegerServer,
    build_jaeger,
    jaeger_binary_path,
    jaeger_version,
)
from pipeline.dev.stack.kafka import KafkaNode, kafka_lib, kafka_version
from pipeline.dev.stack.opensearch import OpenSearchNode, opensearch_lib, opensearch_version
from pipeline.dev.stack.process import free_port
from pipeline.dev.synth import FUNNEL_SPEC, PATH_RULES
from pipeline.errors import EmbeddedServiceError
from pipeline.telemetry import sample_sums

log = logging.getLogger(__name__)

CONSUMER_GROUP = "grayscope-demo"
#: Spans the demo's receiver keeps for the drill-down (the newest; all are counted).
DEMO_SPANS_KEPT = 100_000
PARTITIONS = 4
WORKER_READY_TIMEOUT = 90.0
WORKER_STOP_GRACE = 20.0


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as its ``GRAYSCOPE_*`` variable, so a child sees exactly these."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, Enum):
            text = str(value.value)
        elif isinstance(value, list):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        env[f"GRAYSCOPE_{name.upper()}"] = text
    return env


def worker_env(
    settings: Settings,
    *,
    bootstrap: str,
    topic: str,
    store_url: str,
    otlp_endpoint: str,
    web_port: int,
    data_dir: Path,
    real_stack: bool = False,
) -> dict[str, str]:
    """The worker's settings: the demo's own, pointed at the embedded services."""
    env = settings_env(settings)
    env.update(
        {
            "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
            "GRAYSCOPE_INPUT_TOPICS": topic,
            "GRAYSCOPE_CONSUMER_GROUP": CONSUMER_GROUP,
            "GRAYSCOPE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "GRAYSCOPE_KAFKA_SASL_USERNAME": "",
            "GRAYSCOPE_KAFKA_SASL_PASSWORD": "",
            # The embedded broker answers a first JoinGroup after half the session
            # timeout; Apache Kafka allows 6 s at the least.
            "GRAYSCOPE_KAFKA_SESSION_TIMEOUT": "6" if real_stack else "2",
            "GRAYSCOPE_KAFKA_REBALANCE_TIMEOUT": "10",
            "GRAYSCOPE_ES_URL": store_url,
            # The embedded store has no data streams; the drill-down reads the daily
            # indices on either store.
            "GRAYSCOPE_ES_MODE": "index",
            "GRAYSCOPE_ES_API_KEY": "",
            "GRAYSCOPE_ES_USERNAME": "",
            "GRAYSCOPE_ES_PASSWORD": "",
            "GRAYSCOPE_ES_RETRY_MAX": "2",
            "GRAYSCOPE_ES_INSTALL_TEMPLATES": "true",
            "GRAYSCOPE_OTLP_ENDPOINT": otlp_endpoint,
            "GRAYSCOPE_OTLP_HEADERS": "",
            "GRAYSCOPE_WEB_HOST": "127.0.0.1",
            "GRAYSCOPE_WEB_PORT": str(web_port),
            "GRAYSCOPE_DATA_DIR": str(data_dir),
        }
    )
    if settings.canary_window == Settings.model_fields["canary_window"].default:
        # A demo minute needs short windows for the verdicts to move while it runs. The
        # default alpha holds for the whole rollout and all path groups at once.
        env["GRAYSCOPE_CANARY_WINDOW"] = "10"
        env["GRAYSCOPE_CANARY_INTERVAL"] = "2"
    if not settings.path_rules.strip():
        # The synthetic traffic's routes; the default (first two segments) would
        # make every blog post its own path group.
        env["GRAYSCOPE_PATH_RULES"] = orjson.dumps(list(PATH_RULES)).decode()
    if not settings.canary_funnels.strip():
        # The synthetic users' funnel on the go.dev playground, keyed by client address.
        env["GRAYSCOPE_CANARY_FUNNELS"] = orjson.dumps(list(FUNNEL_SPEC)).decode()
    return env


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@dataclass(slots=True)
class DemoServices:
    log_dir: Path
    topic: str
    dlq_topic: str
    real_stack: bool = False
    broker: EmbeddedBroker | KafkaNode | None = None
    store: EmbeddedStore | OpenSearchNode | None = None
    #: What ran, for the report: e.g. "Kafka: tansu (embedded stand-in)".
    labels: list[str] = field(default_factory=list)
    #: The trace backend: the receiver (stand-ins) or Jaeger (``--real-stack``).
    receiver: OtlpReceiver | None = None
    jaeger: JaegerServer | None = None
    worker: ChildProcess | None = None
    worker_port: int = 0

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.1:{self.worker_port}"

    @property
    def worker_log(self) -> Path:
        return self.log_dir / "worker.log"

    def worker_health(self) -> dict[str, Any] | None:
        try:
            _, body = http_get(self.worker_url + "/healthz")
            health = orjson.loads(body)
        except (OSError, orjson.JSONDecodeError):
            return None
        return health if isinstance(health, dict) else None

    def worker_metrics(self) -> dict[str, float]:
        """The worker's counters; empty while it cannot be reached."""
        try:
            status, body = http_get(self.worker_url + "/metrics")
        except OSError:
            return {}
        return sample_sums(body.decode("utf-8", "replace")) if status == 200 else {}

    def worker_running(self) -> bool:
        return self.worker is not None and self.worker.running()

    def worker_failure(self, what: str) -> str:
        if self.worker is None:
            return what
        return self.worker.describe_failure(what)

    def check_worker(self) -> None:
        """EmbeddedServiceError (with the end of its log) once the worker has exited."""
        worker = self.worker
        if worker is not None and not worker.running():
            code = worker.proc.returncode
            raise EmbeddedServiceError(self.worker_failure(f"the worker exited with code {code}"))

    @property
    def started_anything(self) -> bool:
        started = (self.broker, self.store, self.receiver, self.jaeger, self.worker)
        return any(x is not None for x in started)

    def spans_sent(self, metrics: Mapping[str, float]) -> int:
        """Spans so far: the receiver's count, or the worker's exported count (``metrics``,
        its /metrics) when they go to Jaeger."""
        if self.receiver is not None:
            return self.receiver.received
        return int(metrics.get("grayscope_spans_exported_total", 0))

    def stop(self) -> None:
        """Worker first (SIGTERM, then SIGKILL after a grace period; it still needs the
        broker and store to finish its batch), then the services. Idempotent."""
        errors: list[str] = []
        for name, action in (
            ("worker", self._stop_worker),
            ("OTLP receiver", self._stop_receiver),
            ("Jaeger", self._stop_jaeger),
            ("broker", self._stop_broker),
            ("store", self._stop_store),
        ):
            try:
                action()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{name}: {exc}")
        if errors:
            log.warning("demo teardown: %s", "; ".join(errors))

    def _stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            code = worker.stop(WORKER_STOP_GRACE)
            log.info("worker stopped with exit code %s", code)

    def _stop_receiver(self) -> None:
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.stop()

    def _stop_jaeger(self) -> None:
        jaeger, self.jaeger = self.jaeger, None
        if jaeger is not None:
            jaeger.stop()

    def _stop_broker(self) -> None:
        broker, self.broker = self.broker, None
        if broker is not None:
            broker.stop()

    def _stop_store(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            store.stop()


def start_services(
    services: DemoServices,
    settings: Settings,
    *,
    base_env: Mapping[str, str],
    say: Callable[[str], None],
) -> None:
    """Start everything into ``services``, in dependency order.

    On failure or interruption the caller stops what was started (``services.stop()``);
    a child caught between its start and its assignment here is stopped at exit.
    """
    log_dir = services.log_dir
    broker: EmbeddedBroker | KafkaNode
    store: EmbeddedStore | OpenSearchNode
    if services.real_stack:
        broker, store, jaeger = _start_real_stack(services, say)
        otlp_endpoint = jaeger.otlp_grpc_endpoint
    else:
        services.broker = broker = EmbeddedBroker.start(log_path=log_dir / "broker.log")
        say(f"embedded Kafka-protocol broker (tansu, a stand-in) on {broker.bootstrap}")
        services.store = store = EmbeddedStore.start(log_path=log_dir / "store.log")
        say(f"embedded Elasticsearch-API store (osmem, an in-memory stand-in) on {store.url}")
        services.labels += [
            "Kafka: tansu (embedded stand-in)",
            "store: osmem (in-memory stand-in for the Elasticsearch API)",
        ]
        services.labels.append("traces: grayscope's OTLP receiver (stand-in for Jaeger)")
        # The receiver starts after the worker: forking while gRPC's threads run
        # makes gRPC log a warning about its fork handlers. Its ports are picked now.
        grpc_port, http_port = free_port(), free_port()
        otlp_endpoint = f"http://127.0.0.1:{grpc_port}"
    asyncio.run(create_topics(broker.bootstrap, [services.topic, services.dlq_topic], PARTITIONS))
    services.worker_port = free_port()
    env = worker_env(
        settings,
        bootstrap=broker.bootstrap,
        topic=services.topic,
        store_url=store.url,
        otlp_endpoint=otlp_endpoint,
        web_port=services.worker_port,
        data_dir=log_dir / "worker-data",
        real_stack=services.real_stack,
    )
    worker = ChildProcess(
        [sys.executable, "-m", "pipeline.commands.main", "worker"],
        log_path=services.worker_log,
        env={**base_env, **env},
    )
    services.worker = worker
    if not services.real_stack:
        # Bounded: a --keep-running demo must not grow; searches look at the newest spans.
        services.receiver = receiver = OtlpReceiver.start(
            grpc_port, http_port, keep=DEMO_SPANS_KEPT
        )
        say(
            f"embedded OTLP receiver (a stand-in for Jaeger) on {receiver.grpc_endpoint} "
            f"(gRPC), {receiver.http_endpoint}"
        )

    def started() -> bool:
        health = services.worker_health()
        return bool(health and health.get("started"))

    worker.wait_until(started, timeout=WORKER_READY_TIMEOUT, what="grayscope worker")
    geo = settings.geoip_city_db or "none (GRAYSCOPE_GEOIP_CITY_DB is empty)"
    say(f"grayscope worker pid {worker.pid} on {services.worker_url} (GeoIP: {geo})")


def _start_real_stack(
    services: DemoServices, say: Callable[[str], None]
) -> tuple[KafkaNode, OpenSearchNode, JaegerServer]:
    """Apache Kafka, OpenSearch and Jaeger (all-in-one, in-memory), started at the same
    time, data and logs under the log dir."""
    cache = Path(StackSettings.model_validate({}).cache_dir)
    if not jaeger_binary_path(cache).exists():
        say(f"Jaeger {jaeger_version()}: building with Go (first run only, minutes)")
    binary = build_jaeger(cache)
    say("Apache Kafka, OpenSearch and Jaeger: fetching (first run only) and starting, ~30-60 s")
    kafka = KafkaNode(data_dir=services.log_dir / "kafka", lib=kafka_lib(cache))
    store = OpenSearchNode(data_dir=services.log_dir / "opensearch", lib=opensearch_lib(cache))
    services.broker, services.store = kafka, store
    kafka.spawn()
    store.spawn()
    # Jaeger is ready in about a second, while the JVMs start.
    services.jaeger = jaeger = JaegerServer(binary, services.log_dir / "jaeger")
    jaeger.start()
    kafka.wait_ready()
    store.wait_ready()
    say(f"Apache Kafka {kafka_version()} (KRaft) on {kafka.bootstrap}")
    say(f"OpenSearch {opensearch_version()} on {store.url}")
    say(f"Jaeger {jaeger_version()} (OTLP {jaeger.otlp_grpc_endpoint}) on {jaeger.query_url}")
    services.labels += [
        f"Kafka: Apache Kafka {kafka_version()}",
        f"store: OpenSearch {opensearch_version()}",
        f"traces: Jaeger {jaeger_version()} (all-in-one, in-memory store)",
    ]
    return kafka, store, jaeger
