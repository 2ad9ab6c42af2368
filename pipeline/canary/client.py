"""Read a worker's ``GET /canary`` (for ``grayscope canary status`` and the demo)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson

from pipeline.canary.records import Verdict
from pipeline.errors import CanaryUnavailable

DEFAULT_URL = "http://localhost:6066"


def canary_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/canary") else base + "/canary"


def fetch_canary(base_url: str = DEFAULT_URL, timeout: float = 5.0) -> dict[str, Any]:
    """The ``/canary`` payload of the worker at ``base_url``."""
    url = canary_url(base_url)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        hint = " (canary analysis disabled on this worker?)" if exc.code == 404 else ""
        raise CanaryUnavailable(f"GET {url}: HTTP {exc.code}{hint}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CanaryUnavailable(f"GET {url}: {exc}") from exc
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CanaryUnavailable(f"GET {url}: not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise CanaryUnavailable(f"GET {url}: not a JSON object")
    return payload


def verdicts_from_payload(payload: dict[str, Any]) -> list[Verdict]:
    try:
        return [Verdict.from_json(doc) for doc in payload.get("verdicts") or ()]
    except ValueError as exc:
        raise CanaryUnavailable(f"unexpected /canary payload: {exc}") from exc


def fetch_verdicts(base_url: str = DEFAULT_URL, timeout: float = 5.0) -> list[Verdict]:
    """The verdicts a running worker currently shows on ``/canary``."""
    return verdicts_from_payload(fetch_canary(base_url, timeout))
