"""Request target -> path, query string and first-value query args."""

from __future__ import annotations

from urllib.parse import unquote

from pipeline.core.formats.values import MAX_QUERY_ARGS


def split_target(uri: str) -> tuple[str, str | None]:
    """``/a/b?x=1#f`` -> (``/a/b``, ``x=1``); absolute-form targets keep only the path."""
    if uri.startswith(("http://", "https://")):
        slash = uri.find("/", uri.find("//") + 2)
        uri = uri[slash:] if slash >= 0 else "/"
    hash_at = uri.find("#")
    if hash_at >= 0:
        uri = uri[:hash_at]
    path, sep, query = uri.partition("?")
    return path, (query if sep else None)


def decode_component(value: str, plus_is_space: bool = False) -> str:
    """Percent-decode as UTF-8; invalid sequences become U+FFFD, never an error."""
    if plus_is_space and "+" in value:
        value = value.replace("+", " ")
    return unquote(value, errors="replace") if "%" in value else value


def first_query_values(query: str | None) -> dict[str, str]:
    """``v=1&v=2&abt=x`` -> {"v": "1", "abt": "x"}: the first value wins, like nginx ``$arg_v``.

    Only the first ``MAX_QUERY_ARGS`` pairs are read (see :func:`query_truncated`)."""
    args: dict[str, str] = {}
    if not query:
        return args
    for pair in query.split("&", MAX_QUERY_ARGS)[:MAX_QUERY_ARGS]:
        if not pair:
            continue
        name, _, value = pair.partition("=")
        name = decode_component(name, plus_is_space=True).lower()
        if name and name not in args:
            args[name] = decode_component(value, plus_is_space=True)
    return args


def query_truncated(query: str | None) -> bool:
    """Whether :func:`first_query_values` left pairs of this query string unread."""
    return query is not None and query.count("&", 0, len(query) - 1) >= MAX_QUERY_ARGS
