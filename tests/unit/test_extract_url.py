"""Request target -> path, query string, first value per query arg."""

from __future__ import annotations

import pytest

from pipeline import enrich as enrich_module
from pipeline.core.enrich import EnrichContext, target_parts, url_step
from pipeline.core.extract.path_group import decoded_path
from pipeline.core.extract.url import decode_component, first_query_values, split_target
from pipeline.core.model import AccessRecord, Enrichment


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/a/b?x=1", ("/a/b", "x=1")),
        ("/a/b", ("/a/b", None)),
        ("/a/b?", ("/a/b", "")),
        ("/a/b?x=1#frag", ("/a/b", "x=1")),
        ("/a#frag?x=1", ("/a", None)),
        ("http://go.dev/search?q=go", ("/search", "q=go")),
        ("https://go.dev", ("/", None)),
        ("/a?b?c", ("/a", "b?c")),
        ("", ("", None)),
    ],
)
def test_split_target(uri: str, expected: tuple[str, str | None]) -> None:
    assert split_target(uri) == expected


def test_duplicate_args_first_value_wins() -> None:
    assert first_query_values("v=1.21&v=1.20&abt=exp9&abt=x") == {"v": "1.21", "abt": "exp9"}


def test_query_arg_names_are_lower_cased_values_are_not() -> None:
    assert first_query_values("V=ABC&Abt=Exp9") == {"v": "ABC", "abt": "Exp9"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("q=http+client", {"q": "http client"}),
        ("q=%E6%B5%8B%E8%AF%95", {"q": "测试"}),
        ("q=%ZZ", {"q": "%ZZ"}),
        ("q=%FF", {"q": "\ufffd"}),  # not UTF-8: replaced, never an error
        ("v=", {"v": ""}),
        ("flag", {"flag": ""}),
        ("&&=x&", {}),
        ("", {}),
        (None, {}),
    ],
)
def test_first_query_values(query: str | None, expected: dict[str, str]) -> None:
    assert first_query_values(query) == expected


def test_decode_component() -> None:
    assert decode_component("caf%C3%A9") == "café"
    assert decode_component("a+b") == "a+b"
    assert decode_component("a+b", plus_is_space=True) == "a b"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/godoc/pkg/net/http", "/godoc/pkg/net/http"),
        ("/caf%C3%A9/%E4%B8%AD", "/café/中"),
        ("/a%2Fb/c", "/a%2Fb/c"),  # an encoded slash stays inside its segment
        ("/a%2fb", "/a%2Fb"),
        ("/%ff", "/\ufffd"),
        ("", "/"),
    ],
)
def test_decoded_path(raw: str, expected: str) -> None:
    assert decoded_path(raw) == expected


def test_target_parts() -> None:
    assert target_parts("/godoc/pkg/fmt?v=1.22") == ("/godoc/pkg/fmt", "v=1.22", {"v": "1.22"})
    assert target_parts("/x?") == ("/x", None, {})


def test_url_step_memo_is_bounded_and_keeps_short_targets_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(enrich_module, "_TARGETS", {})
    monkeypatch.setattr(enrich_module, "_TARGET_MEMO_MAX", 8)
    for i in range(50):
        enr = Enrichment()
        url_step(AccessRecord(dataset="x", uri=f"/p/{i}?v={i}"), enr, EnrichContext())
        assert (enr.url_path, enr.query) == (f"/p/{i}", {"v": str(i)})
    assert len(enrich_module._TARGETS) <= 8
    long_uri = "/" + "a" * 10_000
    url_step(AccessRecord(dataset="x", uri=long_uri), Enrichment(), EnrichContext())
    assert long_uri not in enrich_module._TARGETS
