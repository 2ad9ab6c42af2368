"""Credentials on the wire and off the logs: one Authorization rule, one URL redaction.

Used by the store client (Elasticsearch/OpenSearch), ``grayscope kibana
import`` and the settings' ``repr``/``redacted()``.
"""

from __future__ import annotations

import base64
from urllib.parse import urlsplit, urlunsplit


def authorization(*, api_key: str = "", username: str = "", password: str = "") -> str | None:
    """The ``Authorization`` header value: the API key if there is one, else basic
    auth, else None (a caller that refuses both at once checks before).

    An API key is taken as Elasticsearch hands it out (the base64 "encoded"
    form) or, Beats-style, as ``id:key``, which is encoded here; Kibana reads
    the same keys.
    """
    if api_key:
        token = base64.b64encode(api_key.encode()).decode() if ":" in api_key else api_key
        return f"ApiKey {token}"
    if username:
        return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    return None


def redact_url(url: str) -> str:
    """The URL without user info (``https://user:pass@host:9200`` -> ``https://host:9200``),
    for logs and reprs. Text that is not a URL comes back as it is."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:  # an invalid port or bracket: drop everything up to the last "@"
        scheme, sep, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        return f"{scheme}{sep}{authority.rpartition('@')[2]}{slash}{path}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
