"""``grayscope kibana import``: load the saved objects (data view, Lens, map, dashboard).

POSTs ``kibana/grayscope.ndjson`` to ``{kibana_url}[/s/{space}]/api/saved_objects/_import``
as ``multipart/form-data`` (one ``file`` part), with ``kbn-xsrf`` and basic or
API-key auth. Pure request building and response reading sit apart from the
one function that talks HTTP (stdlib ``urllib``: one synchronous request does
not need an event loop).
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from pydantic import SecretStr

from pipeline.config import Settings, flag_name
from pipeline.credentials import authorization
from pipeline.errors import ConfigError, KibanaImportError

DEFAULT_KIBANA_URL = "http://localhost:5601"
NDJSON_NAME = "grayscope.ndjson"
IMPORT_PATH = "/api/saved_objects/_import"
# Kibana space ids: lower-case letters, digits, '_' and '-'.
SPACE_ID = re.compile(r"^[a-z0-9_-]+$")
MAX_ERROR_BODY = 2000

# Connection settings that belong in Settings (kibana_url, kibana_username,
# kibana_password, kibana_api_key). Until config.py has them, this module adds
# the flags itself; once it does, add_settings_arguments adds them and these
# are skipped so argparse never sees a flag twice.
CONNECTION_FLAGS = {
    "kibana_url": f"Kibana base URL, including any base path (default {DEFAULT_KIBANA_URL}).",
    "kibana_username": "Kibana basic-auth user name.",
    "kibana_password": "Kibana basic-auth password (secret).",
    "kibana_api_key": "Kibana/Elasticsearch API key, base64 id:key (secret; wins over basic).",
}


# --------------------------------------------------------------------------
# pure core
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportRequest:
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class ImportFailure:
    type: str
    id: str
    title: str
    error: str


@dataclass(frozen=True)
class ImportResult:
    success: bool
    success_count: int
    failures: list[ImportFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def resolve_ndjson(path: str | None) -> Traversable:
    """The saved objects to import: ``--file``, else the bundled ones.

    The bundled file is package data of the top-level ``kibana`` package (read
    with importlib.resources), so it is found the same way in a checkout, an
    installed wheel and the container image.
    """
    if path:
        candidate = Path(path)
        if not candidate.is_file():
            raise ConfigError("--file", f"no such file: {candidate}")
        return candidate
    bundled = resources.files("kibana").joinpath(NDJSON_NAME)
    if not bundled.is_file():
        raise ConfigError("--file", f"bundled {NDJSON_NAME} not found in the kibana package")
    return bundled


def count_objects(ndjson: bytes, source: str) -> int:
    """Check the file is NDJSON saved objects before sending it; return how many."""
    count = 0
    for number, line in enumerate(ndjson.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError("--file", f"{source}:{number}: not JSON ({exc})") from exc
        if not isinstance(obj, dict) or "type" not in obj or "id" not in obj:
            # Kibana's export summary line has no type/id; tolerate it, as Kibana does.
            if isinstance(obj, dict) and "exportedCount" in obj:
                continue
            raise ConfigError("--file", f"{source}:{number}: not a saved object (no type/id)")
        count += 1
    if not count:
        raise ConfigError("--file", f"{source}: no saved objects in file")
    return count


def normalize_base_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            "GRAYSCOPE_KIBANA_URL", f"must be an http(s) URL like {DEFAULT_KIBANA_URL}, got {url!r}"
        )
    return url.strip().rstrip("/")


def import_url(base_url: str, *, space: str | None, overwrite: bool) -> str:
    prefix = normalize_base_url(base_url)
    if space:
        if not SPACE_ID.match(space):
            raise ConfigError("--space", f"invalid Kibana space id {space!r} (a-z, 0-9, _ and -)")
        prefix += f"/s/{quote(space)}"
    return prefix + IMPORT_PATH + ("?overwrite=true" if overwrite else "")


def multipart_body(ndjson: bytes, filename: str, boundary: str) -> bytes:
    # Kibana rejects files whose name does not end in .ndjson.
    if not filename.endswith(".ndjson"):
        filename = f"{filename}.ndjson"
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
        "Content-Type: application/ndjson\r\n\r\n"
    ).encode()
    return head + ndjson + f"\r\n--{boundary}--\r\n".encode()


def build_request(
    ndjson: bytes,
    *,
    filename: str,
    base_url: str,
    space: str | None,
    overwrite: bool,
    username: str = "",
    password: str = "",
    api_key: str = "",
    boundary: str | None = None,
) -> ImportRequest:
    boundary = boundary or f"grayscope-{secrets.token_hex(16)}"
    body = multipart_body(ndjson, filename, boundary)
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "kbn-xsrf": "true",
        "Accept": "application/json",
        **_authorization_header(username, password, api_key),
    }
    return ImportRequest(import_url(base_url, space=space, overwrite=overwrite), headers, body)


def _describe_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    kind = str(error.get("type", "unknown"))
    if kind == "missing_references":
        refs = ", ".join(
            f"{ref.get('type')}/{ref.get('id')}"
            for ref in error.get("references", [])
            if isinstance(ref, dict)
        )
        return f"missing_references ({refs})" if refs else kind
    detail = error.get("message") or error.get("reason")
    return f"{kind}: {detail}" if detail else kind


def parse_import_response(body: bytes) -> ImportResult:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise KibanaImportError(
            f"Kibana answered with something that is not JSON: {_snippet(body)}"
        ) from exc
    if not isinstance(data, dict) or "success" not in data:
        raise KibanaImportError(f"unexpected Kibana import response: {_snippet(body)}")
    failures = []
    for item in data.get("errors") or []:
        if not isinstance(item, dict):
            continue
        meta = item.get("meta")
        if not isinstance(meta, dict):
            meta = {}
        failures.append(
            ImportFailure(
                type=str(item.get("type", "?")),
                id=str(item.get("id", "?")),
                title=str(item.get("title") or meta.get("title") or ""),
                error=_describe_error(item.get("error")),
            )
        )
    warnings = [
        str(w.get("message", w)) if isinstance(w, dict) else str(w)
        for w in data.get("warnings") or []
    ]
    return ImportResult(
        success=bool(data["success"]),
        success_count=int(data.get("successCount", 0)),
        failures=failures,
        warnings=warnings,
    )


def http_error_message(status: int, body: bytes, url: str) -> str:
    detail = _snippet(body)
    try:
        data = orjson.loads(body)
        if isinstance(data, dict) and data.get("message"):
            detail = str(data.get("error") or "") + ": " + str(data["message"])
    except orjson.JSONDecodeError:
        pass
    hint = {
        401: " (check the Kibana user name/password or API key)",
        403: " (the user needs the saved-object management privilege in this space)",
        404: " (wrong URL or base path, or the space does not exist)",
        415: " (Kibana expects a .ndjson file)",
    }.get(status, "")
    return f"Kibana import failed: HTTP {status} from POST {url}{hint}: {detail}"


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= MAX_ERROR_BODY else text[:MAX_ERROR_BODY] + " ..."


def format_failure(failure: ImportFailure) -> str:
    title = f' "{failure.title}"' if failure.title else ""
    return f"  {failure.type}/{failure.id}{title}: {failure.error}"


# --------------------------------------------------------------------------
# I/O shell
# --------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would re-send a redirected POST as a body-less GET; a redirect here
    # means the URL is wrong (login page, missing base path), so report it.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def send(request: ImportRequest, timeout: float) -> bytes:
    """POST the import; return the 2xx body or raise KibanaImportError."""
    opener = urllib.request.build_opener(_NoRedirect)
    http_request = urllib.request.Request(
        request.url, data=request.body, headers=request.headers, method="POST"
    )
    try:
        with opener.open(http_request, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        body = exc.read() or b""
        if 300 <= exc.code < 400:
            location = exc.headers.get("Location", "?")
            raise KibanaImportError(
                f"Kibana import failed: POST {request.url} was redirected (HTTP {exc.code}) "
                f"to {location}; check the Kibana URL and base path"
            ) from exc
        raise KibanaImportError(http_error_message(exc.code, body, request.url)) from exc
    except urllib.error.URLError as exc:
        raise KibanaImportError(f"cannot reach Kibana at {request.url}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise KibanaImportError(
            f"Kibana did not answer within {timeout:g}s at {request.url}"
        ) from exc
    except OSError as exc:
        raise KibanaImportError(f"cannot reach Kibana at {request.url}: {exc}") from exc


def add_kibana_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``grayscope kibana import`` (settings flags are added by the CLI)."""
    parser.add_argument(
        "--file",
        metavar="PATH",
        default=None,
        help=f"saved objects to import (default: the bundled kibana/{NDJSON_NAME})",
    )
    parser.add_argument(
        "--space", metavar="ID", default=None, help="Kibana space id (default: the default space)"
    )
    parser.add_argument(
        "--no-overwrite",
        dest="overwrite",
        action="store_false",
        default=True,
        help="keep objects that already exist instead of replacing them",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="HTTP timeout in seconds (default 60)",
    )
    for name, help_text in CONNECTION_FLAGS.items():
        if name not in Settings.model_fields:
            parser.add_argument(
                flag_name(name), dest=name, default=None, metavar=name.upper(), help=help_text
            )


def _secret(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value or "")


def _connection(args: argparse.Namespace, settings: Settings) -> tuple[str, str, str, str]:
    """(url, username, password, api_key): a flag this module added, else Settings."""

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else getattr(settings, name, None)

    url = _secret(pick("kibana_url")) or DEFAULT_KIBANA_URL
    return (
        url,
        _secret(pick("kibana_username")),
        _secret(pick("kibana_password")),
        _secret(pick("kibana_api_key")),
    )


def run_kibana_import(args: argparse.Namespace, settings: Settings) -> int:
    """Import the saved objects; print a summary. 0 = all imported, 1 = some failed."""
    path = resolve_ndjson(getattr(args, "file", None))
    try:
        ndjson = path.read_bytes()
    except OSError as exc:
        raise ConfigError("--file", f"cannot read {path}: {exc}") from exc
    expected = count_objects(ndjson, str(path))
    url, username, password, api_key = _connection(args, settings)
    overwrite = bool(getattr(args, "overwrite", True))
    space = getattr(args, "space", None)
    request = build_request(
        ndjson,
        filename=path.name,
        base_url=url,
        space=space,
        overwrite=overwrite,
        username=username,
        password=password,
        api_key=api_key,
    )
    result = parse_import_response(send(request, float(getattr(args, "timeout", 60.0))))

    where = f"{normalize_base_url(url)} (space {space or 'default'})"
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    # Without overwrite, "already exists" is the requested outcome, not a failure.
    kept = [f for f in result.failures if not overwrite and f.error.startswith("conflict")]
    failed = [f for f in result.failures if f not in kept]
    print(f"imported {result.success_count} of {expected} objects from {path} into {where}")
    if kept:
        print(f"kept {len(kept)} existing objects (--no-overwrite)")
    if failed:
        print(f"{len(failed)} objects failed:", file=sys.stderr)
        for failure in failed:
            print(format_failure(failure), file=sys.stderr)
        return 1
    if not result.success and not kept:
        print("Kibana reported success: false without listing errors", file=sys.stderr)
        return 1
    return 0


def _authorization_header(username: str, password: str, api_key: str) -> dict[str, str]:
    value = authorization(api_key=api_key, username=username, password=password)
    return {"Authorization": value} if value else {}
