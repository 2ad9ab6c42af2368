"""`grayscope enrich` as users run it: a subprocess reading stdin.

Documents go to stdout in input order, dead letters to ``--dlq PATH`` (or
stderr), the exit code is 0 for bad input and 2 for bad configuration, and
every flag mirrors a ``GRAYSCOPE_`` environment variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.core.process import Enriched, process
from pipeline.core.enrich import EnrichContext
from pipeline.dev.synth import generate
from tests.unit.conftest import all_sample_lines, mapping_problems

GARBAGE = [
    b"not a log line",
    b"{broken json",
    b"[1, 2, 3]",
    b'{"hello": "world"}',
    b"\xff\xfe invalid utf-8",
    b'{"status": "two hundred", "request_uri": "/"}',
]


def run(
    args: list[str], stdin: bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("GRAYSCOPE_")
    }
    environment["GRAYSCOPE_GEOIP_CITY_DB"] = ""  # no GeoIP unless a test asks for it
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pipeline.commands.main", "enrich", *args],
        input=stdin,
        capture_output=True,
        env=environment,
        timeout=120,
        check=False,
    )


def lines_of(output: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines()]


def test_documents_in_input_order_and_dead_letters_in_the_dlq_file(tmp_path: Path) -> None:
    good = all_sample_lines() + list(generate(60, seed=4))
    mixed: list[bytes] = []
    for index, line in enumerate(good):
        mixed.append(line)
        if index % 10 == 0:
            mixed.append(GARBAGE[(index // 10) % len(GARBAGE)])
    dlq = tmp_path / "dead.jsonl"

    result = run(["--dlq", str(dlq)], b"\n".join(mixed) + b"\n")

    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    documents = lines_of(result.stdout)
    assert len(documents) == len(good)
    ctx = EnrichContext()
    expected = []
    for line in good:
        enriched = process(line, ctx)
        assert isinstance(enriched, Enriched)
        expected.append(enriched.document)
    assert documents == expected  # same documents, same order
    for document in documents:
        assert mapping_problems(document) == []

    dead = lines_of(dlq.read_bytes())
    garbage_count = sum(1 for line in mixed if line in GARBAGE)
    assert len(dead) == garbage_count
    for record in dead:
        assert set(record) == {"reason", "detail", "raw"}
    assert {record["reason"] for record in dead} == {
        "unknown_format",
        "invalid_json",
        "not_an_object",
        "invalid_encoding",
        "invalid_field",
    }
    assert dead[0]["raw"] == "not a log line"
    assert any(record["raw"] == "\\xff\\xfe invalid utf-8" for record in dead)


def test_dead_letters_go_to_stderr_by_default() -> None:
    (sample,) = [line for line in all_sample_lines() if b"start_time" in line][:1]
    result = run([], sample + b"\n" + b"{broken\r\n" + b"\n")
    assert result.returncode == 0
    assert len(lines_of(result.stdout)) == 1
    # Nothing is silently dropped: the blank line is a dead letter too.
    broken, blank = lines_of(result.stderr)
    assert broken["reason"] == "invalid_json"
    assert broken["raw"] == "{broken"
    assert blank == {"reason": "empty", "detail": "empty message", "raw": ""}


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--trusted-proxies", "bogus"], "GRAYSCOPE_TRUSTED_PROXIES"),
        (["--max-message-bytes", "abc"], "GRAYSCOPE_MAX_MESSAGE_BYTES"),
        (["--gray-id-header-pattern", "(unclosed"], "GRAYSCOPE_GRAY_ID_HEADER_PATTERN"),
        (["--path-rules", '[{"match": "("}]'], "GRAYSCOPE_PATH_RULES"),
        (["--path-rules", "[{]"], "GRAYSCOPE_PATH_RULES"),
        (["--geoip-city-db", "/nonexistent/City.mmdb"], "GRAYSCOPE_GEOIP_CITY_DB"),
    ],
)
def test_invalid_configuration_exits_2(args: list[str], setting: str) -> None:
    result = run(args, b"")
    assert result.returncode == 2
    assert setting.encode() in result.stderr
    assert result.stdout == b""


def test_invalid_environment_exits_2() -> None:
    result = run([], b"", {"GRAYSCOPE_TRUSTED_PROXIES": "10.0.0.0/33"})
    assert result.returncode == 2
    assert b"GRAYSCOPE_TRUSTED_PROXIES" in result.stderr


LINE = orjson.dumps(
    {
        "request_uri": "/a/b/c?v=1",
        "status": "200",
        "remote_addr": "203.0.113.5",
        "http_x_forwarded_for": "192.0.2.1",
    }
)


def test_flags_mirror_environment_variables() -> None:
    settings = {
        "trusted-proxies": "203.0.113.0/24",
        "path-group-depth": "3",
        "include-original": "true",
        "service-name": "edge",
    }
    by_flag = run([arg for k, v in settings.items() for arg in (f"--{k}", v)], LINE)
    by_env = run(
        [], LINE, {f"GRAYSCOPE_{k.upper().replace('-', '_')}": v for k, v in settings.items()}
    )
    assert by_flag.returncode == by_env.returncode == 0, by_flag.stderr + by_env.stderr
    assert by_flag.stdout == by_env.stdout
    (document,) = lines_of(by_flag.stdout)
    assert document["client"]["ip"] == "192.0.2.1"  # 203.0.113.5 is a trusted proxy now
    assert document["gray"]["path_group"] == "/a/b/c"
    assert document["event"]["original"] == LINE.decode()
    assert document["service"]["name"] == "edge"


def test_flags_win_over_the_environment() -> None:
    result = run(["--path-group-depth", "1"], LINE, {"GRAYSCOPE_PATH_GROUP_DEPTH": "3"})
    (document,) = lines_of(result.stdout)
    assert document["gray"]["path_group"] == "/a"


def test_geo_from_the_bundled_database() -> None:
    geolite2 = pytest.importorskip("geolite2")
    city_db = str(geolite2.geolite2_database())
    line = orjson.dumps(
        {"request_uri": "/", "remote_addr": "10.0.0.9", "http_x_forwarded_for": "73.15.200.7"}
    )
    result = run([], line, {"GRAYSCOPE_GEOIP_CITY_DB": city_db})
    assert result.returncode == 0, result.stderr
    (document,) = lines_of(result.stdout)
    geo = document["client"]["geo"]
    assert geo["country_iso_code"] == "US"
    assert geo["region_iso_code"] == "US-CA"
    assert geo["city_name"] == "San Jose"
    assert set(geo["location"]) == {"lat", "lon"}
    assert mapping_problems(document) == []
