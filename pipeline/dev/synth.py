"""Deterministic synthetic gray-release traffic: raw Kafka message values.

One seeded generator yields access-log lines the way shippers put them on
Kafka, in a mix of every input format grayscope understands (Envoy/Istio
``json_format`` and ``typed_json_format``, nginx JSON, nginx ``structured``
and ``combined`` text), some wrapped in Fluent Bit / Filebeat / Vector
envelopes. The requests behind them look like a gray release of go.dev:
stable and canary stages, versions, gray ids, several path groups, clients
from public address blocks of many countries behind trusted proxies,
log-normal latencies and realistic status codes. A :class:`Regression`
makes one path group of the canary slower and error-prone, which is what
the demo's drill-down is meant to find.

The client blocks below were checked against the GeoLite2-City database of
the ``maxminddb-geolite2`` package (2018-07 build): every address in them
resolves to the listed country with a city, a region and a location.

Pure: no I/O, no clock unless one is passed in, no global random state.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

# 2026-11-20T12:00:00Z: the day of the sample files.
DEFAULT_START_NS = 1_795_176_000_000_000_000

# envoy_json: Istio's default JSON format (strings, "-"); envoy_typed: the gray-release
# setup's compact typed_json_format with custom header keys (numbers, null).
FORMATS: dict[str, float] = {
    "envoy_json": 0.16,
    "envoy_typed": 0.16,
    "nginx_json": 0.24,
    "nginx_structured": 0.40,
    "nginx_combined": 0.04,
}
ENVELOPES: dict[str, float] = {"fluent_bit": 0.08, "filebeat": 0.08, "vector": 0.06}

# (country, /24 prefix) per block; weights roughly follow real traffic shares.
CLIENT_BLOCKS_V4: tuple[tuple[str, str, float], ...] = (
    ("US", "73.15.200", 6), ("US", "24.6.10", 5), ("US", "98.207.5", 5),
    ("US", "108.28.4", 4), ("US", "173.66.2", 4),
    ("DE", "79.192.10", 3), ("DE", "91.64.20", 3), ("DE", "93.220.3", 2),
    ("GB", "81.129.10", 3), ("GB", "86.1.20", 2), ("GB", "82.12.3", 2),
    ("FR", "90.3.10", 2), ("FR", "78.192.4", 1.5), ("FR", "88.160.5", 1.5),
    ("JP", "126.10.10", 3), ("JP", "153.220.20", 2), ("JP", "114.150.5", 2),
    ("CN", "116.228.20", 3), ("CN", "183.14.3", 3), ("CN", "123.112.4", 2),
    ("BR", "177.33.10", 2), ("BR", "179.218.20", 2), ("BR", "189.6.3", 1),
    ("IN", "49.36.20", 3), ("IN", "106.51.3", 3), ("IN", "122.161.4", 2),
    ("AU", "110.140.3", 1.5), ("AU", "101.160.20", 1.5),
    ("CA", "24.114.10", 2), ("CA", "99.224.3", 2),
    ("KR", "121.134.20", 1.5), ("KR", "175.223.3", 1.5),
    ("RU", "178.140.20", 1), ("RU", "5.18.3", 1), ("RU", "188.162.5", 1),
    ("NL", "84.104.20", 1), ("NL", "77.160.4", 1),
    ("SE", "83.248.3", 1),
    ("SG", "116.86.10", 1), ("SG", "42.60.5", 1),
    ("ZA", "41.13.10", 0.5), ("ZA", "196.210.3", 0.5),
    ("MX", "187.188.10", 1), ("MX", "201.141.3", 1),
    ("ES", "88.26.20", 1), ("ES", "83.32.10", 1),
    ("IT", "93.34.20", 1), ("IT", "2.224.5", 1),
    ("PL", "89.64.20", 1),
    ("AR", "186.22.3", 1),
    ("ID", "110.136.20", 1), ("ID", "180.241.4", 1),
    ("TR", "85.96.3", 1),
    ("NG", "197.210.20", 0.5), ("NG", "41.190.3", 0.5),
)  # fmt: skip
# (country, /48 prefix): any address in these resolves to a city.
CLIENT_BLOCKS_V6: tuple[tuple[str, str], ...] = (
    ("JP", "2400:4050:c8a7"),
    ("US", "2601:1c0:633d"),
    ("FR", "2a01:cb00:a17"),
    ("BR", "2804:14c:bdaa"),
    ("DE", "2a02:8108:9ccd"),
    ("GB", "2a00:23c4:d840"),
    ("AU", "2001:8003:a0b9"),
)
IPV6_SHARE = 0.06

USER_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Go-http-client/2.0",
    "curl/8.5.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    'Mozilla/5.0 (X11; Linux x86_64) "HeadlessChrome"/131.0.0.0 \\ test-runner',
)
_UA_WEIGHTS = (30, 14, 8, 16, 14, 6, 4, 4, 3, 1)

# path group -> (weight, median latency ms, median body bytes)
PATH_GROUPS: dict[str, tuple[float, float, float]] = {
    "/godoc/pkg": (0.34, 18.0, 24_000.0),
    "/blog": (0.16, 9.0, 14_000.0),
    "/doc/tutorial": (0.12, 11.0, 11_000.0),
    "/play/share": (0.12, 45.0, 900.0),
    "/dl": (0.06, 120.0, 2_500_000.0),
    "/search": (0.12, 35.0, 6_000.0),
    "/static": (0.08, 3.0, 3_500.0),
}
# Path-group rules for this traffic (GRAYSCOPE_PATH_RULES takes this JSON list):
# the default grouping (first two segments) would make every blog post and
# download its own group.
PATH_RULES: tuple[dict[str, str], ...] = (
    {"match": "^/godoc/pkg/", "group": "/godoc/pkg", "route": "/godoc/pkg/{name}"},
    {"match": "^/blog/", "group": "/blog", "route": "/blog/{slug}"},
    {"match": "^/doc/tutorial/", "group": "/doc/tutorial", "route": "/doc/tutorial/{name}"},
    {"match": "^/play/share(/|$)", "group": "/play/share", "route": "/play/share/{id}"},
    {"match": "^/dl/", "group": "/dl", "route": "/dl/{file}"},
    {"match": "^/search$", "group": "/search", "route": "/search"},
    {"match": "^/static/", "group": "/static", "route": "/static/{asset}"},
)
_PACKAGES = (
    "net/http", "fmt", "sort", "io", "context", "encoding/json", "os", "strings",
    "sync", "time", "errors", "net/url", "log/slog", "testing", "bufio", "crypto/tls",
)  # fmt: skip
_BLOG_POSTS = (
    "go1.23", "go1.22", "slog", "range-functions", "loopvar-preview", "pgo", "routing-enhancements",
    "chacha8rand", "generic-interfaces", "alias-names", "%E4%B8%AD%E6%96%87-go", "caf%C3%A9",
)  # fmt: skip
_TUTORIALS = (
    "getting-started", "create-module", "web-service-gin", "generics", "fuzz", "database-access",
)  # fmt: skip
_DOWNLOADS = (
    "go1.23.3.linux-amd64.tar.gz", "go1.23.3.darwin-arm64.pkg", "go1.23.3.windows-amd64.msi",
    "go1.22.9.linux-amd64.tar.gz", "go1.23.3.src.tar.gz",
)  # fmt: skip
_SEARCHES = (
    "http+client", "context%20cancel", "json", "goroutine+leak", "%E6%B5%8B%E8%AF%95", "slog",
    "generics", "errors.Is",
)  # fmt: skip
_STATIC = ("css/styles.css", "js/site.js", "images/go-logo-blue.svg", "fonts/roboto.woff2")

# Gray ids: header ids match ^[a-z0-9]{8,16}$, query ids ^[a-z0-9]{4,12}$.
CANARY_GRAY_IDS = ("exp00001", "feature01", "checkout7a")
CONTROL_GRAY_IDS = ("ctrl0001", "holdout22")
QUERY_GRAY_IDS = ("abt1", "exp9")
INVALID_GRAY_IDS = ("FEATURE01", "exp-0001", "x")  # never accepted, never lower-cased

_STAGE_ERRORS = (500, 502, 503, 504)
_FULL_FORMATS = ("envoy_typed", "nginx_json")


@dataclass(frozen=True, slots=True)
class Regression:
    """A canary regression: extra 5xx and latency on one path group of one version."""

    path_group: str = "/play/share"
    version: str | None = None  # None: the generator's canary version
    error_rate: float = 0.3
    extra_latency_ms: float = 400.0


@dataclass(frozen=True, slots=True)
class FunnelTraffic:
    """Users who walk the playground funnel: ``/play`` -> ``/play/compile`` -> ``/play/share``.

    A share of the requests starts a walk by a client of the population (the user
    key is the client address); each walk keeps its arm (stage) from its first
    request. Of those who open the playground ``to_compile`` compile, of those
    ``to_share`` share, after exponential gaps of ``mean_gap_s`` seconds (event
    time). ``canary_drop`` lowers the canary's conversion at both steps by that
    fraction (0.3: 30 % fewer go on): the regression a funnel should catch.
    """

    start_share: float = 0.04
    to_compile: float = 0.6
    to_share: float = 0.35
    mean_gap_s: float = 2.0
    canary_drop: float = 0.0


#: The funnel's steps: (path group, method, path).
FUNNEL_STEPS: tuple[tuple[str, str, str], ...] = (
    ("/play", "GET", "/play"),
    ("/play/compile", "POST", "/play/compile"),
    ("/play/share", "POST", "/play/share"),
)
#: (median latency ms, median body bytes) of the funnel's own path groups.
FUNNEL_SHAPES: dict[str, tuple[float, float]] = {
    "/play": (25.0, 12_000.0),
    "/play/compile": (300.0, 2_000.0),
}
#: GRAYSCOPE_CANARY_FUNNELS for this traffic (the demo configures it).
FUNNEL_SPEC: tuple[dict[str, object], ...] = (
    {
        "name": "playground",
        "steps": [
            {"path_group": "/play", "method": "GET"},
            {"path_group": "/play/compile", "method": "POST"},
            {"path_group": "/play/share", "method": "POST"},
        ],
        "user_key": "client_ip",
        "window_seconds": 10,
    },
)


def synthetic_clock(
    start_ns: int = DEFAULT_START_NS, events_per_second: float = 1000.0
) -> Callable[[], int]:
    """A deterministic clock: each call is one event later at a steady rate."""
    step = round(1e9 / events_per_second)
    now = start_ns - step

    def clock() -> int:
        nonlocal now
        now += step
        return now

    return clock


@dataclass(slots=True)
class _Request:
    start_ns: int
    method: str
    path: str
    query: str  # "" when none
    protocol: str
    status: int
    bytes_sent: int
    bytes_received: int
    duration_ms: int
    upstream_ms: int | None
    upstream_tries: int
    client_ip: str
    forwarded_for: str
    peer: str
    peer_port: int
    user_agent: str
    referer: str | None
    request_id: str
    canary: bool
    canary_marker: str  # "subset" | "header" | "cookie"
    gray_header: tuple[str, str] | None  # (header name, value)
    traceparent: str | None
    b3_trace: str | None
    b3_span: str | None
    upstream_host: str


class _Generator:
    def __init__(
        self,
        seed: int,
        canary_share: float,
        regression: Regression | None,
        clock: Callable[[], int],
        stable_version: str,
        canary_version: str,
        clients: int,
        formats: dict[str, float],
        envelopes: dict[str, float],
        funnel: FunnelTraffic | None = None,
        internet_clients: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.funnel = funnel
        self.internet_clients = internet_clients
        self.ua_cum = _cumulative(_UA_WEIGHTS)
        # Funnel walks waiting for their next step: (due ns, sequence, step, client, canary).
        self._walks: list[tuple[int, int, int, int, bool]] = []
        self._walk_seq = 0
        # A user's arm is sticky (a cookie would keep it): each client draws once, from
        # its own generator so that the default stream stays as it was.
        self._client_rolls: list[float] = []
        self.canary_share = canary_share
        self.regression = regression
        self.clock = clock
        self.stable_version = stable_version
        self.canary_version = canary_version
        self.regression_version = (
            regression.version or canary_version if regression is not None else None
        )
        self.format_names = list(formats)
        self.format_cum = _cumulative(formats.values())
        self.envelope_names = [*envelopes, "none"]
        rest = max(0.0, 1 - sum(envelopes.values()))
        self.envelope_cum = _cumulative([*envelopes.values(), rest])
        self.group_names = list(PATH_GROUPS)
        self.group_cum = _cumulative(w for w, _, _ in PATH_GROUPS.values())
        self.clients = self._clients(max(1, clients))
        # Walkers: one client per address (the funnel's user key), so two walkers never
        # share a user.
        self._walkers: list[int] = []
        if funnel is not None:
            rolls = random.Random(seed ^ 0x5EED)
            self._client_rolls = [rolls.random() for _ in self.clients]
            first: dict[str, int] = {}
            for index, (ip, _) in enumerate(self.clients):
                first.setdefault(ip, index)
            self._walkers = sorted(first.values())

    def _clients(self, count: int) -> list[tuple[str, str]]:
        """A fixed client population (ip, user agent): repeat visitors make caches realistic."""
        rng = self.rng
        block_cum = _cumulative(w for _, _, w in CLIENT_BLOCKS_V4)
        ua_cum = _cumulative(_UA_WEIGHTS)
        out = []
        for _ in range(count):
            if rng.random() < IPV6_SHARE:
                _, prefix = rng.choice(CLIENT_BLOCKS_V6)
                groups = ":".join(f"{rng.getrandbits(16):x}" for _ in range(5))
                ip = f"{prefix}:{groups}"
            else:
                _, prefix, _ = CLIENT_BLOCKS_V4[_pick(rng, block_cum)]
                ip = f"{prefix}.{rng.randint(1, 254)}"
            out.append((ip, USER_AGENTS[_pick(rng, ua_cum)]))
        return out

    def _walk(self, now_ns: int) -> tuple[int, int, bool] | None:
        """The funnel step this request is, as (step, client index, canary), or None."""
        funnel = self.funnel
        assert funnel is not None
        rng = self.rng
        walks = self._walks
        if walks and walks[0][0] <= now_ns:
            _, _, step, client, canary = heapq.heappop(walks)
        elif rng.random() < funnel.start_share:
            step, client = 0, self._walkers[int(len(self._walkers) * rng.random())]
            canary = self._client_rolls[client] < self.canary_share
        else:
            return None
        if step + 1 < len(FUNNEL_STEPS):
            go_on = funnel.to_compile if step == 0 else funnel.to_share
            if canary:
                go_on *= 1.0 - funnel.canary_drop
            if rng.random() < go_on:
                due = now_ns + int(rng.expovariate(1.0 / funnel.mean_gap_s) * 1e9)
                self._walk_seq += 1
                heapq.heappush(walks, (due, self._walk_seq, step + 1, client, canary))
        return step, client, canary

    def request(self) -> _Request:
        rng = self.rng
        start_ns = self.clock()
        walk = self._walk(start_ns) if self.funnel is not None else None
        canary = rng.random() < self.canary_share
        group = self.group_names[_pick(rng, self.group_cum)]
        if walk is not None:
            canary = walk[2]
            group, method, path = FUNNEL_STEPS[walk[0]]
            query = ""
            shape = FUNNEL_SHAPES.get(group)
            median_ms, median_bytes = shape if shape else PATH_GROUPS[group][1:]
        else:
            _, median_ms, median_bytes = PATH_GROUPS[group]
            method, path, query = self._target(group)
        version = self.canary_version if canary else self.stable_version
        params: list[str] = []
        if query:
            params.append(query)
        if group not in ("/dl", "/static") and rng.random() < 0.85:
            params.append(f"v={version}")
            if rng.random() < 0.03:
                params.append("v=0.0")  # duplicate arg: the first one counts
        gray_header: tuple[str, str] | None = None
        roll = rng.random()
        if (canary and roll < 0.9) or (not canary and roll < 0.08):
            ids = CANARY_GRAY_IDS if canary else CONTROL_GRAY_IDS
            where = rng.random()
            if where < 0.55:
                gray_header = ("x-abtest-id", rng.choice(ids))
            elif where < 0.8:
                gray_header = ("x-gray-id", rng.choice(ids))
            else:
                params.append(f"abt={rng.choice(QUERY_GRAY_IDS)}")
        elif roll > 0.99:
            gray_header = ("x-abtest-id", rng.choice(INVALID_GRAY_IDS))
        status = self._status(group)
        if method == "POST" and status in (200, 304):
            status = 201  # a new share, never "not modified"
        duration = rng.lognormvariate(math.log(median_ms), 0.6)
        if (
            canary
            and self.regression is not None
            and group == self.regression.path_group
            and version == self.regression_version
        ):
            duration += self.regression.extra_latency_ms * (0.5 + rng.random())
            if rng.random() < self.regression.error_rate:
                status = rng.choice(_STAGE_ERRORS)
        duration_ms = max(1, int(duration))
        upstream_ms: int | None = max(0, duration_ms - rng.randint(0, 3))
        tries = 2 if status in (502, 504) and rng.random() < 0.5 else 1
        if status == 504 and rng.random() < 0.3:
            upstream_ms = None
        body = 0 if status in (204, 304) else int(rng.lognormvariate(math.log(median_bytes), 0.5))
        if status >= 400:
            body = rng.randint(100, 600)
        if self.internet_clients:
            client_ip = _public_ipv4(rng)
            user_agent = USER_AGENTS[_pick(rng, self.ua_cum)]
        else:
            client_ip, user_agent = self.clients[int(len(self.clients) * rng.random() ** 2)]
        if walk is not None:
            client_ip, user_agent = self.clients[walk[1]]
        forwarded_for, peer = self._forwarding(client_ip)
        traceparent = b3_trace = b3_span = None
        trace_roll = rng.random()
        if trace_roll < 0.6:
            traceparent = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
        elif trace_roll < 0.8:
            bits = 64 if rng.random() < 0.5 else 128
            b3_trace = f"{rng.getrandbits(bits):0{bits // 4}x}"
            b3_span = f"{rng.getrandbits(64):016x}"
        return _Request(
            start_ns=start_ns,
            method=method,
            path=path,
            query="&".join(params),
            protocol="HTTP/2" if rng.random() < 0.55 else "HTTP/1.1",
            status=status,
            bytes_sent=body,
            bytes_received=rng.randint(300, 1200) if method == "POST" else 0,
            duration_ms=duration_ms,
            upstream_ms=upstream_ms,
            upstream_tries=tries,
            client_ip=client_ip,
            forwarded_for=forwarded_for,
            peer=peer,
            peer_port=rng.randint(32768, 60999),
            user_agent=user_agent,
            referer="https://go.dev/" if rng.random() < 0.4 else None,
            request_id=_uuid(rng.getrandbits(128)),
            canary=canary,
            canary_marker=rng.choice(("subset", "header", "cookie")),
            gray_header=gray_header,
            traceparent=traceparent,
            b3_trace=b3_trace,
            b3_span=b3_span,
            upstream_host=f"10.4.{rng.randint(0, 3)}.{rng.randint(2, 250)}:8080",
        )

    def _target(self, group: str) -> tuple[str, str, str]:
        rng = self.rng
        if group == "/godoc/pkg":
            return "GET", f"/godoc/pkg/{rng.choice(_PACKAGES)}", ""
        if group == "/blog":
            return "GET", f"/blog/{rng.choice(_BLOG_POSTS)}", ""
        if group == "/doc/tutorial":
            return "GET", f"/doc/tutorial/{rng.choice(_TUTORIALS)}", ""
        if group == "/play/share":
            share = f"{rng.getrandbits(60):015x}"[:11]
            if rng.random() < 0.3:
                return "POST", "/play/share", ""
            return "GET", f"/play/share/{share}", ""
        if group == "/dl":
            return "GET", f"/dl/{rng.choice(_DOWNLOADS)}", ""
        if group == "/search":
            return "GET", "/search", f"q={rng.choice(_SEARCHES)}"
        return "GET", f"/static/{rng.choice(_STATIC)}", ""

    def _status(self, group: str) -> int:
        roll = self.rng.random()
        if roll < 0.004:
            return self.rng.choice(_STAGE_ERRORS)
        if roll < 0.02:
            return 404
        if roll < 0.025:
            return 429 if group == "/search" else 400
        if group == "/play/share" and roll < 0.05:
            return 201
        if group == "/static" and roll < 0.35:
            return 304
        if roll < 0.09:
            return 304
        return 200

    def _forwarding(self, client_ip: str) -> tuple[str, str]:
        """(X-Forwarded-For, direct peer): clients sit behind a CDN/LB hop and the ingress."""
        rng = self.rng
        roll = rng.random()
        ingress = f"10.4.0.{rng.randint(1, 9)}"
        if roll < 0.5:
            return client_ip, ingress
        lb = f"10.0.{rng.randint(0, 3)}.{rng.randint(2, 20)}"
        if roll < 0.96:
            return f"{client_ip}, {lb}", ingress
        # A client-supplied left-most entry: never believed past the untrusted client hop.
        return f"203.0.113.{rng.randint(1, 254)}, {client_ip}, {lb}", ingress

    def envelope(self) -> str:
        return self.envelope_names[_pick(self.rng, self.envelope_cum)]

    def format(self, req: _Request) -> str:
        name = self.format_names[_pick(self.rng, self.format_cum)]
        # Istio's default keys and the nginx text formats log neither the stage
        # header/cookie nor the gray id headers: such requests go through the
        # formats that do, as in the gray-release setup.
        if name == "envoy_json":
            subset_only = not req.canary or req.canary_marker == "subset"
            expressible = req.gray_header is None and subset_only
        else:
            expressible = name in _FULL_FORMATS or (req.gray_header is None and not req.canary)
        if not expressible:
            name = _FULL_FORMATS[self.rng.random() < 0.5]
        return name


#: First octets that are not public unicast (private, loopback, CGNAT's 100, link-local's
#: 169, multicast and reserved from 224): skipped when drawing a random client address.
_NOT_PUBLIC_FIRST_OCTETS = frozenset({0, 10, 100, 127, 169, 172, 192, *range(224, 256)})


def _public_ipv4(rng: random.Random) -> str:
    """A random public IPv4 address (whole first octets left out where a part is not)."""
    while True:
        value = rng.getrandbits(32)
        if value >> 24 not in _NOT_PUBLIC_FIRST_OCTETS:
            return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _cumulative(weights: Iterable[float]) -> list[float]:
    """Normalised running totals, for picking by one uniform draw."""
    out: list[float] = []
    total = 0.0
    for weight in weights:
        total += float(weight)
        out.append(total)
    return [w / total for w in out] if total else out


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    roll = rng.random()
    for index, bound in enumerate(cumulative):
        if roll < bound:
            return index
    return len(cumulative) - 1


def _uuid(bits: int) -> str:
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _iso_ms(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1_000_000:03d}Z"


def _clf_time(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def _target(req: _Request) -> str:
    return f"{req.path}?{req.query}" if req.query else req.path


# --- renderers ----------------------------------------------------------------


def _istio_default(req: _Request) -> dict[str, object]:
    """Istio's default JSON access-log keys (``json_format``: strings, ``"-"`` = missing)."""
    subset = "canary" if req.canary else "stable"
    upstream_ms = req.upstream_ms
    return {
        "start_time": _iso_ms(req.start_ns),
        "route_name": "default",
        "method": req.method,
        "path": _target(req),
        "protocol": req.protocol,
        "response_code": str(req.status),
        "response_flags": "UF" if req.status == 503 else "-",
        "response_code_details": "via_upstream",
        "connection_termination_details": "-",
        "upstream_transport_failure_reason": "-",
        "bytes_received": str(req.bytes_received),
        "bytes_sent": str(req.bytes_sent),
        "duration": str(req.duration_ms),
        "upstream_service_time": "-" if upstream_ms is None else str(upstream_ms),
        "x_forwarded_for": req.forwarded_for,
        "user_agent": req.user_agent,
        "request_id": req.request_id,
        "authority": "go.dev",
        "upstream_host": req.upstream_host,
        "upstream_cluster": f"outbound|8080|{subset}|godoc.default.svc.cluster.local",
        "upstream_local_address": "10.4.0.3:41000",
        "downstream_local_address": "10.4.0.3:8080",
        "downstream_remote_address": f"{req.peer}:{req.peer_port}",
        "requested_server_name": "-",
    }


def _envoy_typed(req: _Request) -> dict[str, object]:
    """The gray-release setup's ``typed_json_format``: numbers, ``null``, custom header keys."""
    subset = "canary" if req.canary and req.canary_marker == "subset" else "stable"
    gray = req.gray_header
    traceparent = req.traceparent
    obj: dict[str, object] = {
        "time": _iso_ms(req.start_ns),
        "method": req.method,
        "path": _target(req),
        "protocol": req.protocol,
        "response_code": req.status,
        "duration": req.duration_ms,
        "upstream_service_time": req.upstream_ms,
        "bytes_sent": req.bytes_sent,
        "x_forwarded_for": req.forwarded_for,
        "downstream_remote_address": f"{req.peer}:{req.peer_port}",
        "user_agent": req.user_agent,
        "request_id": req.request_id,
        "cluster": f"outbound|8080|{subset}|godoc.default.svc.cluster.local",
        "gray_id": gray[1] if gray and gray[0] == "x-gray-id" else None,
        "x_abtest_id": gray[1] if gray and gray[0] == "x-abtest-id" else None,
        "trace_id": traceparent[3:35] if traceparent else None,
        "x_b3_traceid": req.b3_trace,
    }
    if req.canary and req.canary_marker == "header":
        obj["x_go_stage"] = "canary"
    elif req.canary and req.canary_marker == "cookie":
        obj["cookie"] = "go_canary=1; _ga=GA1.2.1234567890.1732000000"
    return obj


def _nginx_json(req: _Request, rng: random.Random) -> dict[str, object]:
    end_ns = req.start_ns + req.duration_ms * 1_000_000
    gray = req.gray_header
    query = req.query
    if req.upstream_ms is None:
        upstream = "-"
    elif req.upstream_tries > 1:
        first = rng.randint(1, max(1, req.upstream_ms))
        upstream = f"{first / 1000:.3f}, {max(0, req.upstream_ms - first) / 1000:.3f}"
    else:
        upstream = f"{req.upstream_ms / 1000:.3f}"
    obj: dict[str, object] = {
        "time_iso8601": datetime.fromtimestamp(end_ns // 1_000_000_000, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S+00:00"
        ),
        "remote_addr": req.peer,
        "request_method": req.method,
        "request_uri": _target(req),
        "server_protocol": "HTTP/2.0" if req.protocol == "HTTP/2" else req.protocol,
        "status": str(req.status),
        "body_bytes_sent": str(req.bytes_sent),
        "request_length": str(req.bytes_received + 420),
        "request_time": f"{req.duration_ms / 1000:.3f}",
        "upstream_response_time": upstream,
        "upstream_addr": req.upstream_host,
        "http_host": "go.dev",
        "http_referer": req.referer or "",
        "http_user_agent": req.user_agent,
        "http_x_forwarded_for": req.forwarded_for,
        "http_x_abtest_id": gray[1] if gray and gray[0] == "x-abtest-id" else "",
        "http_x_gray_id": gray[1] if gray and gray[0] == "x-gray-id" else "",
        "http_x_go_stage": "canary" if req.canary and req.canary_marker != "cookie" else "",
        "cookie_go_canary": "1" if req.canary and req.canary_marker == "cookie" else "",
        "http_traceparent": req.traceparent or "",
        "arg_v": _first_arg(query, "v"),
        "arg_abt": _first_arg(query, "abt"),
        "request_id": req.request_id.replace("-", ""),
    }
    if rng.random() < 0.5:
        obj["msec"] = f"{end_ns // 1_000_000 / 1000:.3f}"
    return obj


def _first_arg(query: str, name: str) -> str:
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return ""


def _nginx_escape(value: str) -> str:
    """nginx's default escaping: ``"``, ``\\`` and non-printable-ASCII bytes as ``\\xXX``."""
    if value.isascii() and '"' not in value and "\\" not in value:
        return value
    out = []
    for byte in value.encode():
        if byte in (0x22, 0x5C) or byte < 0x20 or byte > 0x7E:
            out.append(f"\\x{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def _nginx_text(req: _Request, structured: bool) -> str:
    end_ns = req.start_ns + req.duration_ms * 1_000_000
    target = _target(req)
    protocol = "HTTP/2.0" if req.protocol == "HTTP/2" else req.protocol
    line = (
        f'{req.peer} - - [{_clf_time(end_ns)}] "{req.method} {target} {protocol}" '
        f'{req.status} {req.bytes_sent} "{_nginx_escape(req.referer or "-")}" '
        f'"{_nginx_escape(req.user_agent)}"'
    )
    if not structured:
        return line
    version = _first_arg(req.query, "v") or "-"
    return (
        f"{line} {target} {req.query or '-'} "
        f'version="{version}" region="{_nginx_escape(req.forwarded_for)}"'
    )


def _wrap(envelope: str, line: str, req: _Request, rng: random.Random) -> bytes:
    ts = _iso_ms(req.start_ns + req.duration_ms * 1_000_000)
    if envelope == "fluent_bit":
        return orjson.dumps({"@timestamp": (req.start_ns // 1_000_000) / 1000, "log": line})
    if envelope == "filebeat":
        return orjson.dumps(
            {
                "@timestamp": ts,
                "@metadata": {"beat": "filebeat", "type": "_doc", "version": "8.15.0"},
                "message": line,
                "log": {
                    "file": {"path": "/var/log/nginx/access.log"},
                    "offset": rng.randint(0, 1 << 30),
                },
                "host": {"name": f"edge-{rng.choice('abc')}"},
                "input": {"type": "filestream"},
                "ecs": {"version": "8.0.0"},
            }
        )
    return orjson.dumps(
        {
            "file": "/var/log/nginx/access.log",
            "host": f"edge-{rng.choice('abc')}",
            "message": line,
            "source_type": "file",
            "timestamp": ts,
        }
    )


#: The versions the synthetic stable and canary run unless told otherwise.
STABLE_VERSION, CANARY_VERSION = "1.22", "1.23"


def generate(
    n: int | None,
    seed: int = 0,
    *,
    canary_share: float = 0.1,
    regression: Regression | None = None,
    clock: Callable[[], int] | None = None,
    stable_version: str = STABLE_VERSION,
    canary_version: str = CANARY_VERSION,
    clients: int = 20_000,
    formats: dict[str, float] | None = None,
    envelopes: dict[str, float] | None = None,
    funnel: FunnelTraffic | None = None,
    internet_clients: bool = False,
) -> Iterator[bytes]:
    """Yield ``n`` raw message values (forever when ``n`` is None).

    ``clock`` returns each request's start time in epoch ns (pass
    ``time.time_ns`` for live traffic); the default is :func:`synthetic_clock`.
    ``internet_clients``: every request from a new random public IPv4 address
    (instead of the ``clients`` population): a GeoIP cache's worst case.
    The same arguments always yield the same bytes (unless ``clock`` varies).
    ``funnel``: also users walking the playground funnel (``FunnelTraffic``).
    """
    if not 0.0 <= canary_share <= 1.0:
        raise ValueError("canary_share must be within [0, 1]")
    gen = _Generator(
        seed,
        canary_share,
        regression,
        clock or synthetic_clock(),
        stable_version,
        canary_version,
        clients,
        FORMATS if formats is None else formats,
        ENVELOPES if envelopes is None else envelopes,
        funnel,
        internet_clients,
    )
    rng = gen.rng
    count = 0
    while n is None or count < n:
        count += 1
        req = gen.request()
        name = gen.format(req)
        envelope = gen.envelope()
        if name == "envoy_json" or name == "envoy_typed":
            obj = _istio_default(req) if name == "envoy_json" else _envoy_typed(req)
            if envelope == "none":
                yield orjson.dumps(obj)
                continue
            line = orjson.dumps(obj).decode()
        elif name == "nginx_json":
            obj = _nginx_json(req, rng)
            if envelope == "none":
                yield orjson.dumps(obj)
                continue
            line = orjson.dumps(obj).decode()
        else:
            line = _nginx_text(req, structured=name == "nginx_structured")
            if envelope == "none":
                yield line.encode()
                continue
        yield _wrap(envelope, line, req, rng)
