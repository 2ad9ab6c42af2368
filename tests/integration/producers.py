"""Real log producers for the integration tests: nginx and librdkafka shippers.

- :class:`NginxSite`: Debian's nginx as a plain process (``daemon off``, its own
  prefix, pid file, error log and temp paths in a test folder, ``user root``
  because the sandbox runs as root). Two server blocks on free loopback ports:
  ``edge`` (a reverse proxy that appends to X-Forwarded-For, as a load balancer
  in front of the site would) and ``site`` (locations shaped like go.dev's,
  answering from the config). The site logs every request twice: in the
  gray-release setup's ``structured`` text format and in an ``escape=json``
  format whose keys are nginx variable names.
- :func:`kcat_produce`: kcat (librdkafka) sends a file's lines to a topic.
- :class:`RsyslogShipper`: rsyslogd (``-n``, own config, pid file and work
  dir) tails a file with imfile and sends each line with omkafka (librdkafka).

The Debian packages come from ``deploy/debian-packages.txt`` (``make
debian-packages``, a prerequisite of ``make test``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pipeline.dev.stack.process import LOOPBACK, ManagedProcess, free_port, port_accepts
from pipeline.errors import ServiceError

# DESIGN "Nginx text": combined +
# ` $request_uri $args version="$arg_v" region="$http_x_forwarded_for"`.
STRUCTURED_FORMAT = (
    '\'$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" $request_uri $args version="$arg_v" '
    'region="$http_x_forwarded_for"\''
)
# Keys named after nginx variables (DESIGN "Nginx JSON"): http_<header>, cookie_<name>.
JSON_KEYS = (
    "time_iso8601", "msec", "remote_addr", "request_method", "request_uri", "server_protocol",
    "status", "body_bytes_sent", "request_length", "request_time", "upstream_response_time",
    "http_host", "http_user_agent", "http_x_forwarded_for", "http_x_gray_id",
    "http_x_abtest_id", "http_x_go_stage", "cookie_go_canary", "http_traceparent",
    "http_x_b3_traceid", "http_x_b3_spanid", "request_id",
)  # fmt: skip
JSON_FORMAT = "'{" + ",".join(f'"{key}":"${key}"' for key in JSON_KEYS) + "}'"

# go.dev-like locations; the site answers from the config (no files, no upstream).
SITE_LOCATIONS = """
        location = / { return 200 "go.dev\\n"; }
        location /godoc/pkg/ { return 200 "package documentation\\n"; }
        location /blog/ { return 200 "blog post\\n"; }
        location /doc/ { return 200 "documentation\\n"; }
        location /dl/ { return 200 "download\\n"; }
        location /play/compile { return 503 "playground overloaded\\n"; }
        location / { return 404 "not found\\n"; }
"""


def require_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise ServiceError(f"`{name}` not installed: run `make debian-packages`")
    return found


class NginxSite:
    """nginx with an ``edge`` proxy and a go.dev-like ``site``, logging to two files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.structured_log = folder / "access.structured.log"
        self.json_log = folder / "access.json.log"
        self.edge_port = 0
        self.site_port = 0
        self._process: ManagedProcess | None = None

    @property
    def edge_url(self) -> str:
        return f"http://{LOOPBACK}:{self.edge_port}"

    @property
    def site_url(self) -> str:
        return f"http://{LOOPBACK}:{self.site_port}"

    def config(self) -> str:
        folder = self.folder
        temp = folder / "temp"
        return f"""
user root;
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 256; }}
http {{
    default_type text/plain;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    log_format structured {STRUCTURED_FORMAT};
    log_format grayjson escape=json {JSON_FORMAT};
    access_log off;

    server {{
        listen {LOOPBACK}:{self.edge_port};
        location / {{
            proxy_pass http://{LOOPBACK}:{self.site_port};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
    server {{
        listen {LOOPBACK}:{self.site_port};
        access_log {self.structured_log} structured;
        access_log {self.json_log} grayjson;
{SITE_LOCATIONS}
    }}
}}
"""

    def start(self) -> NginxSite:
        nginx = require_binary("nginx")
        (self.folder / "temp").mkdir(parents=True, exist_ok=True)
        self.edge_port, self.site_port = free_port(), free_port()
        while self.site_port == self.edge_port:
            self.site_port = free_port()
        config = self.folder / "nginx.conf"
        config.write_text(self.config())
        # -e: the error log before the config is read (else the package's /var/log path).
        error_log = self.folder / "error.log"
        self._process = ManagedProcess(
            "nginx",
            [nginx, "-p", str(self.folder), "-c", str(config), "-e", str(error_log)],
            log_path=self.folder / "nginx.out",
            ready=lambda: (
                port_accepts(LOOPBACK, self.edge_port) and port_accepts(LOOPBACK, self.site_port)
            ),
            cwd=self.folder,
            startup_timeout=30,
            stop_grace=10,
        )
        self._process.start()
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def __enter__(self) -> NginxSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kcat_produce(bootstrap: str, topic: str, path: Path, compression: str = "none") -> None:
    """Every line of ``path`` as one message (kcat -P -l), acknowledged by all replicas,
    in batches compressed by librdkafka with ``compression`` (none, gzip, snappy, lz4,
    zstd)."""
    kcat = require_binary("kcat")
    codec = ["-X", f"compression.codec={compression}"]
    result = subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-l", "-X", "acks=all", *codec, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(f"kcat failed ({result.returncode}): {result.stderr[-2000:]}")


class RsyslogShipper:
    """rsyslogd tailing one file (imfile) into one topic (omkafka), as in production."""

    def __init__(self, folder: Path, watched: Path, bootstrap: str, topic: str) -> None:
        self.folder = folder
        self.watched = watched
        self.bootstrap = bootstrap
        self.topic = topic
        self._process: ManagedProcess | None = None

    def config(self) -> str:
        work = self.folder / "work"
        return f"""
global(workDirectory="{work}")
module(load="imfile")
module(load="omkafka")
template(name="line" type="string" string="%msg%")
ruleset(name="to_kafka") {{
    action(type="omkafka" broker=["{self.bootstrap}"] topic="{self.topic}" template="line"
           confParam=["queue.buffering.max.ms=50", "acks=all"]
           action.resumeRetryCount="-1")
}}
input(type="imfile" file="{self.watched}" tag="nginx:" ruleset="to_kafka"
      freshStartTail="off" reopenOnTruncate="on")
"""

    def start(self) -> RsyslogShipper:
        rsyslogd = require_binary("rsyslogd")
        (self.folder / "work").mkdir(parents=True, exist_ok=True)
        config = self.folder / "rsyslog.conf"
        config.write_text(self.config())
        check = subprocess.run(
            [rsyslogd, "-N1", "-f", str(config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise ServiceError(f"rsyslog config invalid: {check.stderr[-2000:]}")
        pid_file = self.folder / "rsyslogd.pid"
        self._process = ManagedProcess(
            "rsyslogd",
            [rsyslogd, "-n", "-f", str(config), "-i", str(pid_file)],
            log_path=self.folder / "rsyslogd.out",
            ready=pid_file.exists,
            cwd=self.folder,
            startup_timeout=30,
            stop_grace=10,
        )
        self._process.start()
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def __enter__(self) -> RsyslogShipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
