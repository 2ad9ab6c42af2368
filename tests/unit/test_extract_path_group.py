"""Path groups: default first-N segments, configurable rules, http.route."""

from __future__ import annotations

import pytest

from pipeline.core.extract.path_group import PathRules, default_group
from pipeline.dev.synth import PATH_RULES
from tests.unit.conftest import doc


@pytest.mark.parametrize(
    ("path", "group"),
    [
        ("/godoc/pkg/net/http", "/godoc/pkg"),
        ("/godoc/pkg", "/godoc/pkg"),
        ("/godoc", "/godoc"),
        ("/", "/"),
        ("", "/"),
        ("//godoc///pkg/x", "/godoc/pkg"),  # empty segments ignored
        ("/café/中/x", "/café/中"),
        ("*", "/*"),
    ],
)
def test_default_group_is_the_first_two_segments(path: str, group: str) -> None:
    assert default_group(path, 2) == group
    assert PathRules().classify(path) == (group, None)


def test_depth_is_configurable() -> None:
    assert default_group("/a/b/c/d", 3) == "/a/b/c"
    assert default_group("/a/b/c/d", 1) == "/a"


RULES = PathRules.from_config(
    [
        {"match": "^/godoc/pkg/", "group": "/godoc/pkg", "route": "/godoc/pkg/{name}"},
        {"match": "^/blog/", "group": "/blog"},
        {"match": "^/play/", "route": "/play/{rest}"},  # no group: the default grouping
        {"match": "^/godoc/", "group": "/never"},  # shadowed by the first rule for pkg paths
    ],
    depth=2,
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/godoc/pkg/net/http", ("/godoc/pkg", "/godoc/pkg/{name}")),
        ("/blog/slog", ("/blog", None)),
        ("/play/share/abc", ("/play/share", "/play/{rest}")),
        ("/godoc/other", ("/never", None)),
        ("/doc/tutorial/x", ("/doc/tutorial", None)),
    ],
)
def test_rules_first_match_wins(path: str, expected: tuple[str, str | None]) -> None:
    assert RULES.classify(path) == expected
    assert RULES.classify(path) == expected  # memoised answer is the same


def test_the_memo_starts_over_when_full() -> None:
    rules = PathRules()
    for i in range(20_000):
        rules.classify(f"/p/{i}")
    assert len(rules._memo) <= 16_384


def test_route_and_path_group_in_the_document() -> None:
    from pipeline.core.enrich import EnrichContext

    ctx = EnrichContext(path_rules=RULES)
    document = doc('{"request_uri": "/godoc/pkg/net/http?v=1", "status": "200"}', ctx)
    assert document["gray"]["path_group"] == "/godoc/pkg"
    assert document["http"]["route"] == "/godoc/pkg/{name}"


def test_percent_encoded_path_is_grouped_decoded() -> None:
    document = doc('{"request_uri": "/%62log/caf%C3%A9/x", "status": "200"}')
    assert document["url"]["path"] == "/blog/café/x"
    assert document["gray"]["path_group"] == "/blog/café"


def test_synth_rules_are_valid_config() -> None:
    rules = PathRules.from_config([dict(r) for r in PATH_RULES], depth=2)
    assert rules.classify("/blog/slog") == ("/blog", "/blog/{slug}")
    assert rules.classify("/play/share") == ("/play/share", "/play/share/{id}")
    assert rules.classify("/search") == ("/search", "/search")
