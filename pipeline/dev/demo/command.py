"""``grayscope demo``: the whole pipeline on one machine, then the drill-down.

Starts a broker, a store and a trace backend (the embedded stand-ins, among them
grayscope's own OTLP receiver, or with ``--real-stack`` Apache Kafka, OpenSearch
and Jaeger) and the real worker (see
:mod:`pipeline.dev.demo.services`), sends a staged gray release with a canary
regression through them (:mod:`pipeline.dev.demo.traffic`), waits for the worker
to index it, and prints what a Kibana user would drill down to, computed by
aggregation queries against the store (:mod:`pipeline.dev.demo.summary`), plus
the spans of one gray id as Jaeger's tag search finds them (with
``--real-stack``, Jaeger's own search: ``GET /api/traces?tags=…``).

Everything it started is stopped on the way out: after the summary, on
Ctrl-C/SIGTERM, and on errors (``--keep-running`` waits for Ctrl-C first).
Exit status: 0 after a summary, 1 on failure, 130 when interrupted before
the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pipeline.commands.produce import KafkaSender, StatusLine, check_path_group, format_count
from pipeline.config import Settings
from pipeline.dev.demo.extras import DemoContext, safe_extra_sections
from pipeline.dev.demo.progress import Counts
from pipeline.dev.demo.report import (
    Endpoints,
    endpoints_section,
    headline,
    render_report,
    span_services,
    summary_sections,
)
from pipeline.dev.demo.services import DemoServices, start_services
from pipeline.dev.demo.stages import plan_stages
from pipeline.dev.demo.summary import (
    INDEX_PATTERN,
    Window,
    parse_summary,
    spotlight_gray_id,
    summary_query,
)
from pipeline.dev.demo.traffic import TrafficPlan, TrafficResult, drive
from pipeline.dev.stack.jaeger import JaegerQuery, jaeger_version
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

DEFAULT_DURATION = 60.0
DEFAULT_RATE = 1000.0
DEFAULT_SEED = 7
DEFAULT_REGRESSION = "/play/share"
STABLE_VERSION = "1.22"
CANARY_VERSION = "1.23"
QUERY_TIMEOUT = 120.0


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        metavar="SECONDS",
        help=f"seconds of traffic, split over the rollout stages 1%% -> 5%% -> 50%% "
        f"(default {DEFAULT_DURATION:g})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="EVENTS_PER_S",
        help=f"requests per second (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="random seed of the synthetic traffic"
    )
    parser.add_argument(
        "--regression",
        metavar="PATH_GROUP",
        default=DEFAULT_REGRESSION,
        help="path group made slow and error-prone on the canary version "
        f"(default {DEFAULT_REGRESSION}; 'none' for a healthy canary)",
    )
    parser.add_argument(
        "--conversion-drop",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="the canary's users of the playground funnel (/play -> /play/compile -> "
        "/play/share) go on this much less often (0..1; default 0: the funnel is judged, "
        "with no drop)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the summary keep everything up, print the endpoints, wait for Ctrl-C",
    )
    parser.add_argument(
        "--real-stack",
        action="store_true",
        help="run on Apache Kafka, OpenSearch and Jaeger (Java 17 and Go; the first run fetches "
        "the jars with Maven and builds Jaeger) instead of the embedded stand-ins",
    )
    parser.add_argument(
        "--log-dir",
        metavar="PATH",
        default=None,
        help="where the broker, store and worker logs go (default: a new temporary directory)",
    )


def _validate(args: argparse.Namespace) -> None:
    if args.duration <= 0:
        raise ConfigError("--duration", "must be > 0")
    if args.rate <= 0:
        raise ConfigError("--rate", "must be > 0")
    if args.regression.lower() != "none":
        check_path_group(args.regression)
    if not 0.0 <= getattr(args, "conversion_drop", 0.0) <= 1.0:
        raise ConfigError("--conversion-drop", "must be within 0..1")


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the same cleanup runs."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted()


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """For the teardown: a second Ctrl-C must not leave half-stopped children behind."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="grayscope demo: %(name)s: %(message)s")
    # The broker connection's transient errors while services start and stop.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """``grayscope demo``; see the module doc."""
    _validate(args)
    if not settings.input_topics:
        raise ConfigError("GRAYSCOPE_INPUT_TOPICS", "no input topic configured")
    stages = plan_stages(args.duration)
    regression = None if args.regression.lower() == "none" else args.regression
    log_dir = (
        Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="grayscope-demo-"))
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    status = StatusLine(sys.stderr, tty=sys.stderr.isatty())
    _configure_logging()
    # Explicitly: a shell starting us in the background sets SIGINT to "ignore".
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    services = DemoServices(
        log_dir=log_dir,
        topic=settings.input_topics[0],
        dlq_topic=settings.dlq_topic,
        real_stack=args.real_stack,
    )
    summarised = False
    try:
        status.message(f"grayscope demo: starting the pipeline (logs in {log_dir})")
        start_services(
            services,
            settings,
            # The worker inherits PATH, locale and the like; every GRAYSCOPE_*
            # variable is set explicitly, so none of ours leaks in unchanged.
            base_env=os.environ,
            say=lambda text: status.message(f"  {text}"),
        )
        from pipeline.dev.synth import FunnelTraffic

        plan = TrafficPlan(
            stages,
            args.seed,
            regression,
            args.rate,
            (STABLE_VERSION, CANARY_VERSION),
            FunnelTraffic(canary_drop=getattr(args, "conversion_drop", 0.0)),
        )
        status.message(
            f"sending {format_count(args.rate)} requests/s for {args.duration:g} s "
            f"(regression: {_regression_text(regression)})"
        )
        result = _run_traffic(services, plan, status)
        if result.interrupted:
            status.message("interrupted: stopping")
            return EXIT_INTERRUPTED
        documents = result.counts.indexed if result.counts.indexed is not None else result.produced
        status.message(
            f"computing the drill-down: aggregations over {format_count(documents)} documents"
        )
        summary_text, gray_id, span_services = build_report(services, plan, result)
        sys.stdout.write(summary_text)
        sys.stdout.flush()
        summarised = True
        if args.keep_running and not _keep_running(
            services, log_dir, gray_id, span_services, status
        ):
            return EXIT_FAILED
        return EXIT_FAILED if result.failed else EXIT_OK
    except KeyboardInterrupt:
        status.clear()
        if summarised:  # the normal end of --keep-running
            return EXIT_OK
        status.message("interrupted: stopping")
        return EXIT_INTERRUPTED
    finally:
        with _signals_ignored():
            if services.started_anything:
                status.message("stopping the worker and the services")
                services.stop()
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def _regression_text(path_group: str | None) -> str:
    if path_group is None:
        return "none"
    from pipeline.dev.synth import Regression

    shape = Regression(path_group=path_group)
    return (
        f"canary {CANARY_VERSION} on {path_group}: {shape.error_rate:.0%} of requests 5xx, "
        f"+{shape.extra_latency_ms:.0f} ms"
    )


def _run_traffic(services: DemoServices, plan: TrafficPlan, status: StatusLine) -> TrafficResult:
    assert services.broker is not None
    sender = KafkaSender(
        services.topic, {"bootstrap_servers": services.broker.bootstrap}, rate=plan.rate
    )
    try:
        return asyncio.run(
            drive(
                sender,
                plan,
                probe=_probe(services),
                check_worker=services.check_worker,
                status=status,
            )
        )
    finally:
        # The event loop's signal handling put SIGTERM back to the default.
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _probe(services: DemoServices) -> Callable[[], Counts]:
    last_indexed: list[int] = []

    def probe() -> Counts:
        store = services.store
        if store is not None:
            try:
                store.request("POST", f"/{INDEX_PATTERN}/_refresh", timeout=5.0)
                count = store.request("GET", f"/{INDEX_PATTERN}/_count", timeout=5.0)["count"]
                last_indexed[:] = [int(count)]
            except Exception:  # no index yet, or busy: keep the last answer
                pass
        indexed = last_indexed[0] if last_indexed else None
        metrics = services.worker_metrics()
        consumed = metrics.get("grayscope_messages_consumed_total")
        dead = metrics.get("grayscope_dead_lettered_total")
        return Counts(
            indexed=indexed,
            spans=services.spans_sent(metrics),
            consumed=int(consumed) if consumed is not None else None,
            dead_lettered=int(dead) if dead is not None else None,
        )

    return probe


def build_report(
    services: DemoServices, plan: TrafficPlan, result: TrafficResult
) -> tuple[str, str | None, list[str]]:
    """The drill-down text, the gray id whose spans it shows, and their services."""
    store = services.store
    assert store is not None

    def store_request(method: str, path: str, body: Any = None) -> Any:
        return store.request(method, path, body, timeout=QUERY_TIMEOUT)

    store_request("POST", f"/{INDEX_PATTERN}/_refresh")
    started = time.monotonic()
    response = store_request("POST", f"/{INDEX_PATTERN}/_search", summary_query(result.windows))
    took = time.monotonic() - started
    summary = parse_summary(response, result.windows)
    gray_id = spotlight_gray_id(summary)
    jaeger = services.jaeger
    spans_went = "received"
    if jaeger is not None:
        # The worker exports a span per request it indexed; Jaeger then finds them.
        spans_sent = _wait_for_exports(services, documents=summary.total.requests)
        spans_went = "exported to Jaeger"
        expected = next((r.total.requests for r in summary.gray_ids if r.gray_id == gray_id), 0)
        spans = _jaeger_spans(jaeger.query_url, gray_id, result.windows, expected)
        all_spans: Callable[[], list[dict[str, Any]]] = functools.partial(list, spans)
        version: str | None = jaeger_version()
    else:
        receiver = services.receiver
        assert receiver is not None
        spans = receiver.find("gray.id", gray_id) if gray_id else []
        spans_sent, all_spans, version = receiver.received, receiver.spans, None
    sections = summary_sections(summary, gray_id, spans, version)
    context = DemoContext(
        store_request=store_request,
        index_pattern=INDEX_PATTERN,
        windows=tuple(result.windows),
        regression=_regression(plan),
        stable_version=plan.versions[0],
        canary_version=plan.versions[1],
        summary=summary,
        spans=all_spans,
        worker_url=services.worker_url,
    )
    sections += safe_extra_sections(context)
    counts = result.counts
    intro = [
        "services: " + "; ".join(services.labels),
        *headline(summary, result.produced, counts.dead_lettered or 0, spans_sent, spans_went),
        _rollout_text(result),
        f"regression injected: {_regression_text(plan.regression_path_group)}",
        f"(one _search with terms, filter, range and percentiles aggregations, {took:.1f} s: "
        "the numbers Kibana's panels show)",
    ]
    if result.drain_timed_out:
        intro.append("note: the worker had not finished when these numbers were taken")
    if result.failed:
        intro.append(f"note: {format_count(result.failed)} messages could not be produced")
    return render_report(intro, sections), gray_id, span_services(spans)


#: How long the report waits for the worker's last spans to be exported and for
#: Jaeger's batch processor (200 ms) to store them.
SPAN_WAIT_SECONDS = 30.0
#: Traces per Jaeger search; one request is one trace.
JAEGER_SEARCH_LIMIT = 5000


def _wait_for_exports(services: DemoServices, documents: int) -> int:
    """The worker's exported span count, once it covers every indexed document (or the
    wait is over)."""
    deadline = time.monotonic() + SPAN_WAIT_SECONDS
    while True:
        sent = services.spans_sent(services.worker_metrics())
        if sent >= documents or time.monotonic() > deadline:
            return sent
        time.sleep(0.2)


def _jaeger_spans(
    query_url: str, gray_id: str | None, windows: Sequence[Window], expected: int
) -> list[dict[str, Any]]:
    """The spans Jaeger's tag search finds for ``gray_id``, in every service Jaeger knows
    (Jaeger searches one service at a time), repeated until they are ``expected`` many
    (the gray id's documents) or the wait is over."""
    if gray_id is None:
        return []
    query = JaegerQuery(query_url, timeout=QUERY_TIMEOUT)
    # The spans start at the requests' times, inside the rollout windows.
    start_ns = min(w.start_ns for w in windows) - 60 * 10**9
    end_ns = max(w.end_ns for w in windows) + 60 * 10**9
    deadline = time.monotonic() + SPAN_WAIT_SECONDS
    while True:
        spans = [
            span
            for service in query.services()
            if service != "jaeger"
            for span in query.find_spans(
                service,
                {"gray.id": gray_id},
                start_ns=start_ns,
                end_ns=end_ns,
                limit=JAEGER_SEARCH_LIMIT,
            )
        ]
        if len(spans) >= expected or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def _regression(plan: TrafficPlan) -> Any:
    from pipeline.dev.synth import Regression

    if plan.regression_path_group is None:
        return None
    return Regression(path_group=plan.regression_path_group, version=plan.versions[1])


def _rollout_text(result: TrafficResult) -> str:
    steps = [f"{w.label} for {(w.end_ns - w.start_ns) / 1e9:.0f} s" for w in result.windows]
    return "rollout: " + " -> ".join(steps)


def _keep_running(
    services: DemoServices,
    log_dir: Path,
    gray_id: str | None,
    span_services: Sequence[str],
    status: StatusLine,
) -> bool:
    """Wait for Ctrl-C (KeyboardInterrupt); False when the worker died meanwhile."""
    assert services.broker and services.store
    if services.jaeger is not None:
        jaeger = services.jaeger
        otlp_grpc, otlp_http, jaeger_url = (
            jaeger.otlp_grpc_endpoint,
            jaeger.otlp_http_endpoint,
            jaeger.query_url,
        )
    else:
        assert services.receiver is not None
        receiver = services.receiver
        otlp_grpc, otlp_http, jaeger_url = receiver.grpc_endpoint, receiver.http_endpoint, ""
    endpoints = Endpoints(
        bootstrap=services.broker.bootstrap,
        topic=services.topic,
        dlq_topic=services.dlq_topic,
        store_url=services.store.url,
        otlp_grpc=otlp_grpc,
        otlp_http=otlp_http,
        worker_url=services.worker_url,
        log_dir=str(log_dir),
        jaeger_url=jaeger_url,
        span_service=span_services[0] if span_services else "",
    )
    section = endpoints_section(endpoints, gray_id)
    sys.stdout.write("\n".join([section.title, *("  " + line for line in section.lines)]) + "\n")
    sys.stdout.flush()
    while services.worker_running():
        time.sleep(0.5)
    status.message(services.worker_failure("the worker exited"))
    return False
