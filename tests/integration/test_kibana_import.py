"""``grayscope kibana import`` against a local HTTP server standing in for Kibana.

The server records what arrives (method, path, query, headers, multipart body)
and answers with whatever the test scripted: Kibana's success and partial
failure bodies, HTTP errors, a redirect.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.parser
import email.policy
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.commands.kibana import (
    add_kibana_arguments,
    build_request,
    import_url,
    multipart_body,
    parse_import_response,
    run_kibana_import,
)
from pipeline.config import Settings, add_settings_arguments, settings_from_args
from pipeline.dev.stack.process import free_port
from pipeline.errors import ConfigError, KibanaImportError

ROOT = Path(__file__).resolve().parents[2]
NDJSON = ROOT / "kibana" / "grayscope.ndjson"
OBJECT_COUNT = sum(1 for line in NDJSON.read_text().splitlines() if line.strip())


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeKibana:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    status: int = 200
    body: bytes = b""
    extra_headers: dict[str, str] = field(default_factory=dict)

    def answer(self, status: int, payload: Any, **headers: str) -> None:
        self.status = status
        self.body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.extra_headers = headers


@pytest.fixture
def kibana() -> Iterator[FakeKibana]:
    fake = FakeKibana(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            parts = urlsplit(self.path)
            fake.requests.append(
                Recorded(
                    method="POST",
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length),
                )
            )
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            for key, value in fake.extra_headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(fake.body)))
            self.end_headers()
            self.wfile.write(fake.body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    fake.answer(200, {"success": True, "successCount": OBJECT_COUNT, "successResults": []})
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def parse(argv: list[str]) -> tuple[argparse.Namespace, Settings]:
    """The flags as `grayscope kibana import` gets them (command options + settings)."""
    parser = argparse.ArgumentParser()
    add_kibana_arguments(parser)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    return args, settings_from_args(args)


def run(argv: list[str]) -> int:
    args, settings = parse(argv)
    return run_kibana_import(args, settings)


def file_part(recorded: Recorded) -> tuple[str | None, str | None, bytes]:
    """(form field name, filename, content) of the single multipart part."""
    head = f"Content-Type: {recorded.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + recorded.body)
    assert message.is_multipart()
    (part,) = list(message.iter_parts())
    name = part.get_param("name", header="content-disposition")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return (str(name) if name else None), part.get_filename(), payload


def cli_has_kibana_import() -> bool:
    from pipeline.commands.main import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["kibana", "import"])
    except SystemExit:
        return False
    return True


# --------------------------------------------------------------------------
# the request Kibana receives
# --------------------------------------------------------------------------


def test_import_posts_the_ndjson_as_multipart(
    kibana: FakeKibana, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(
        ["--kibana-url", kibana.url, "--kibana-username", "elastic", "--kibana-password", "s3cret"]
    )

    assert code == 0
    (request,) = kibana.requests
    assert request.method == "POST"
    assert request.path == "/api/saved_objects/_import"
    assert request.query == {"overwrite": ["true"]}
    assert request.headers["kbn-xsrf"] == "true"
    expected = base64.b64encode(b"elastic:s3cret").decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    name, filename, content = file_part(request)
    assert name == "file"
    assert filename == "grayscope.ndjson"
    assert content == NDJSON.read_bytes()
    out = capsys.readouterr()
    assert f"imported {OBJECT_COUNT} of {OBJECT_COUNT} objects" in out.out
    assert "s3cret" not in out.out + out.err


def test_space_api_key_and_no_overwrite(kibana: FakeKibana) -> None:
    code = run(
        [
            "--kibana-url",
            kibana.url + "/",
            "--kibana-api-key",
            "aWQ6a2V5",
            "--kibana-username",
            "ignored-when-api-key",
            "--space",
            "team-a",
            "--no-overwrite",
        ]
    )

    assert code == 0
    (request,) = kibana.requests
    assert request.path == "/s/team-a/api/saved_objects/_import"
    assert request.query == {}
    assert request.headers["authorization"] == "ApiKey aWQ6a2V5"


def test_base_path_and_custom_file(kibana: FakeKibana, tmp_path: Path) -> None:
    custom = tmp_path / "mine.ndjson"
    custom.write_text('{"type":"index-pattern","id":"x","attributes":{"title":"x-*"}}\n')

    code = run(["--kibana-url", kibana.url + "/kibana", "--file", str(custom)])

    assert code == 0
    (request,) = kibana.requests
    assert request.path == "/kibana/api/saved_objects/_import"
    assert "authorization" not in request.headers
    assert file_part(request)[1:] == ("mine.ndjson", custom.read_bytes())


# --------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------


def test_http_500_is_an_error_with_kibanas_message(kibana: FakeKibana) -> None:
    kibana.answer(
        500, {"statusCode": 500, "error": "Internal Server Error", "message": "boom in kibana"}
    )

    with pytest.raises(KibanaImportError) as caught:
        run(["--kibana-url", kibana.url])

    message = str(caught.value)
    assert "HTTP 500" in message and "boom in kibana" in message
    assert caught.value.retriable is False


def test_http_401_hints_at_credentials(kibana: FakeKibana) -> None:
    kibana.answer(401, {"statusCode": 401, "error": "Unauthorized", "message": "unable to auth"})

    with pytest.raises(KibanaImportError, match=r"HTTP 401.*password or API key"):
        run(["--kibana-url", kibana.url, "--kibana-username", "u", "--kibana-password", "p"])


def test_success_false_lists_every_failed_object(
    kibana: FakeKibana, capsys: pytest.CaptureFixture[str]
) -> None:
    kibana.answer(
        200,
        {
            "success": False,
            "successCount": OBJECT_COUNT - 3,
            "errors": [
                {
                    "id": "grayscope-overview",
                    "type": "dashboard",
                    "meta": {"title": "grayscope: gray release overview"},
                    "error": {
                        "type": "missing_references",
                        "references": [{"type": "lens", "id": "grayscope-top-gray-ids"}],
                    },
                },
                {
                    "id": "grayscope-client-map",
                    "type": "map",
                    "title": "Client locations",
                    "error": {"type": "unknown", "message": "mapping conflict", "statusCode": 400},
                },
                {"id": "grayscope-access", "type": "index-pattern", "error": {"type": "conflict"}},
            ],
        },
    )

    code = run(["--kibana-url", kibana.url])

    assert code == 1
    err = capsys.readouterr().err
    assert "3 objects failed" in err
    assert (
        'dashboard/grayscope-overview "grayscope: gray release overview": '
        "missing_references (lens/grayscope-top-gray-ids)" in err
    )
    assert 'map/grayscope-client-map "Client locations": unknown: mapping conflict' in err
    assert "index-pattern/grayscope-access: conflict" in err


def test_conflicts_are_expected_without_overwrite(
    kibana: FakeKibana, capsys: pytest.CaptureFixture[str]
) -> None:
    kibana.answer(
        200,
        {
            "success": False,
            "successCount": 0,
            "errors": [
                {"id": "grayscope-access", "type": "index-pattern", "error": {"type": "conflict"}}
            ],
        },
    )

    assert run(["--kibana-url", kibana.url, "--no-overwrite"]) == 0
    assert "kept 1 existing objects" in capsys.readouterr().out


def test_connection_refused_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(
        KibanaImportError, match=r"cannot reach Kibana at http://127\.0\.0\.1:\d+/api"
    ):
        run(["--kibana-url", url])


def test_redirect_is_reported_not_followed(kibana: FakeKibana) -> None:
    kibana.answer(302, b"", Location="/login?next=%2F")

    with pytest.raises(KibanaImportError, match=r"redirected \(HTTP 302\) to /login"):
        run(["--kibana-url", kibana.url])
    assert len(kibana.requests) == 1


def test_non_json_answer(kibana: FakeKibana) -> None:
    kibana.answer(200, b"<html>not kibana</html>")

    with pytest.raises(KibanaImportError, match="not JSON"):
        run(["--kibana-url", kibana.url])


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        run(["--file", str(tmp_path / "missing.ndjson")])
    empty = tmp_path / "empty.ndjson"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="no saved objects"):
        run(["--file", str(empty)])
    broken = tmp_path / "broken.ndjson"
    broken.write_text("{nope\n")
    with pytest.raises(ConfigError, match=r"broken\.ndjson:1: not JSON"):
        run(["--file", str(broken)])
    with pytest.raises(ConfigError, match="space"):
        run(["--space", "Not A Space"])
    with pytest.raises(ConfigError, match="http"):
        run(["--kibana-url", "localhost:5601"])


# --------------------------------------------------------------------------
# pure parts
# --------------------------------------------------------------------------


def test_import_url() -> None:
    assert (
        import_url("http://k:5601/", space=None, overwrite=True)
        == "http://k:5601/api/saved_objects/_import?overwrite=true"
    )
    assert (
        import_url("https://k/base", space="ops", overwrite=False)
        == "https://k/base/s/ops/api/saved_objects/_import"
    )


def test_multipart_filename_always_ends_in_ndjson() -> None:
    body = multipart_body(b"{}\n", "objects.json", "b")
    assert b'filename="objects.json.ndjson"' in body
    assert body.endswith(b"\r\n--b--\r\n")


def test_build_request_headers() -> None:
    request = build_request(
        b"{}\n", filename="x.ndjson", base_url="http://k", space=None, overwrite=True
    )
    assert request.headers["kbn-xsrf"] == "true"
    assert "Authorization" not in request.headers


def test_parse_import_response_success() -> None:
    result = parse_import_response(
        b'{"success":true,"successCount":2,"warnings":[{"type":"simple","message":"hi"}]}'
    )
    assert result.success and result.success_count == 2 and result.warnings == ["hi"]
    assert result.failures == []


# --------------------------------------------------------------------------
# through the real command line, once `grayscope kibana import` is wired
# --------------------------------------------------------------------------


@pytest.mark.skipif(not cli_has_kibana_import(), reason="`grayscope kibana import` not wired yet")
def test_cli_exit_codes(kibana: FakeKibana, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.commands.main import main

    assert main(["kibana", "import", "--kibana-url", kibana.url]) == 0
    kibana.answer(500, {"statusCode": 500, "error": "Internal Server Error", "message": "boom"})
    assert main(["kibana", "import", "--kibana-url", kibana.url]) != 0
    assert "boom" in capsys.readouterr().err


@pytest.mark.skipif(not cli_has_kibana_import(), reason="`grayscope kibana import` not wired yet")
def test_cli_process(kibana: FakeKibana) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.commands.main",
            "kibana",
            "import",
            "--kibana-url",
            kibana.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert f"imported {OBJECT_COUNT} of {OBJECT_COUNT} objects" in done.stdout
    assert kibana.requests[0].path == "/api/saved_objects/_import"
