"""Gray id precedence and validation, stage, version — exactly per DESIGN."""

from __future__ import annotations

import re

import pytest

from pipeline.core.extract import gray
from pipeline.core.extract.gray import GrayRules, istio_subset
from pipeline.core.model import AccessRecord
from tests.unit.conftest import doc

RULES = GrayRules()


def record(**kwargs: object) -> AccessRecord:
    return AccessRecord(dataset="nginx.access", **kwargs)  # type: ignore[arg-type]


def gray_id(
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    args: dict[str, str] | None = None,
) -> tuple[str | None, str | None]:
    rec = record(headers=headers or {}, args=args or {})
    return gray.gray_id(rec, query or {}, RULES)


# --- gray id ------------------------------------------------------------------


def test_abtest_header_first() -> None:
    headers = {"x-abtest-id": "feature01", "x-gray-id": "exp00001"}
    assert gray_id(headers, {"abt": "exp9"}) == ("feature01", "header")


def test_gray_header_second() -> None:
    assert gray_id({"x-gray-id": "exp00001"}, {"abt": "exp9"}) == ("exp00001", "header")


def test_query_arg_last() -> None:
    assert gray_id({}, {"abt": "exp9"}) == ("exp9", "query")


def test_nginx_arg_when_the_uri_has_no_abt() -> None:
    assert gray_id({}, {}, {"abt": "exp9"}) == ("exp9", "query")


@pytest.mark.parametrize(
    "invalid",
    [
        "FEATURE01",  # upper case: never lower-cased into validity
        "Feature01",
        " feature01",  # never trimmed into validity
        "feature01 ",
        "feat01",  # too short for a header id (8..16)
        "feature01feature01x",  # too long
        "exp-0001",
        "exp_00001",
        "",
        "féature01",
    ],
)
def test_invalid_header_ids_fall_through(invalid: str) -> None:
    assert gray_id({"x-abtest-id": invalid}, {}) == (None, None)
    assert gray_id({"x-abtest-id": invalid, "x-gray-id": "exp00001"}) == ("exp00001", "header")
    assert gray_id({"x-abtest-id": invalid}, {"abt": "exp9"}) == ("exp9", "query")


@pytest.mark.parametrize("invalid", ["EXP9", "ab", "abcdefghijklm", "exp 9", "exp9\n"])
def test_invalid_query_ids_are_ignored(invalid: str) -> None:
    assert gray_id({}, {"abt": invalid}) == (None, None)


def test_query_ids_may_be_shorter_than_header_ids() -> None:
    assert gray_id({}, {"abt": "abcd"}) == ("abcd", "query")
    assert gray_id({"x-gray-id": "abcd"}) == (None, None)


def test_configurable_names_and_patterns() -> None:
    rules = GrayRules(
        id_headers=("x-exp",),
        id_header_pattern=re.compile(r"^[A-Z]{3}$"),
        id_query_arg="exp",
        id_query_pattern=re.compile(r"^\d+$"),
    )
    rec = record(headers={"x-exp": "ABC", "x-abtest-id": "feature01"})
    assert gray.gray_id(rec, {}, rules) == ("ABC", "header")
    assert gray.gray_id(record(), {"exp": "42"}, rules) == ("42", "query")


def test_end_to_end_header_case_from_the_issue() -> None:
    """`X-Abtest-Id: FEATURE01` is invalid and falls through to the next candidate."""
    line = (
        '{"request_uri": "/godoc/pkg/fmt?abt=exp9", "status": "200", '
        '"http_x_abtest_id": "FEATURE01", "http_x_gray_id": ""}'
    )
    assert doc(line)["gray"]["id"] == "exp9"
    assert doc(line)["gray"]["id_source"] == "query"


# --- stage --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "subset"),
    [
        ("outbound|8080|v1|godoc.default.svc.cluster.local", "v1"),
        ("outbound|8080|canary|godoc.default.svc.cluster.local", "canary"),
        ("outbound|8080||godoc.default.svc.cluster.local", None),
        ("inbound|8080||", None),
        ("godoc", None),
        ("a|b", None),
        (None, None),
        ("", None),
    ],
)
def test_istio_subset(cluster: str | None, subset: str | None) -> None:
    assert istio_subset(cluster) == subset


@pytest.mark.parametrize(
    ("rec", "subset", "stage"),
    [
        (record(headers={"x-go-stage": "canary"}), None, "canary"),
        (record(headers={"x-go-stage": " Canary "}), None, "canary"),
        (record(headers={"x-go-stage": "stable"}), None, "stable"),
        (record(cookies={"go_canary": "1"}), None, "canary"),
        (record(cookies={"go_canary": "0"}), None, "stable"),
        (record(cookies={"go_canary": "true"}), None, "stable"),
        (record(), "canary", "canary"),
        (record(), "v2", "stable"),
        (record(), None, "stable"),
    ],
)
def test_stage(rec: AccessRecord, subset: str | None, stage: str) -> None:
    assert gray.stage(rec, subset, RULES) == stage


# --- version ------------------------------------------------------------------


def version(
    query: dict[str, str] | None = None,
    subset: str | None = None,
    **kwargs: object,
) -> str | None:
    return gray.version(record(**kwargs), query or {}, subset, RULES)


def test_query_arg_first_value() -> None:
    assert version({"v": "1.22"}, "v1", version_field="1.20") == "1.22"


def test_empty_query_arg_is_no_version() -> None:
    assert version({"v": ""}) is None
    assert version({"v": ""}, "v3") == "v3"


def test_nginx_arg_v_when_the_uri_has_none() -> None:
    assert version({}, args={"v": "1.21"}) == "1.21"


def test_structured_version_field() -> None:
    assert version({}, "v1", version_field="1.20") == "1.20"


def test_subset_matching_v_digits() -> None:
    assert version({}, "v2") == "v2"
    assert version({}, "v10-beta") == "v10-beta"
    assert version({}, "canary") is None
    assert version({}, "stable") is None
    assert version({}, "vx") is None


def test_uri_wins_when_the_version_field_says_dash() -> None:
    line = (
        '10.0.0.9 - - [20/Nov/2026:12:00:04 +0000] "GET /index.html HTTP/1.1" 200 5 "-" "-" '
        '/godoc/pkg/io?v=1.23 - version="-" region="-"'
    )
    assert doc(line)["gray"]["version"] == "1.23"


def test_duplicate_v_first_wins_end_to_end() -> None:
    line = '{"request_uri": "/x?v=1.21&v=1.20", "status": "200", "arg_v": "1.21"}'
    assert doc(line)["gray"]["version"] == "1.21"
