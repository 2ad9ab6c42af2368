"""PromQL checks shared by the rule and dashboard tests: what the worker exports,
which metrics an expression names, and promtool's parser on a set of expressions."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import yaml

from pipeline.canary.counters import CanaryStats
from agents.handler import BatchStats
from pipeline.geoip import GeoIPStats
from pipeline.metrics.requests import RequestMetrics
from pipeline.sinks.dlq import DeadLetterStats
from pipeline.sinks.elasticsearch.sink import EsSinkStats
from pipeline.sinks.otlp.exporter import OtlpStats
from pipeline.telemetry import Telemetry


class _TopicPartition(NamedTuple):
    topic: str
    partition: int


class _Consumer:
    _committed_offset: dict[object, int] = {}

    def assignment(self) -> set[_TopicPartition]:
        return {_TopicPartition("access-logs", 0)}

    def highwater(self, tp: object) -> int:
        return 1


def exported_metric_names() -> set[str]:
    """Every sample name a worker's /metrics can carry (every stats source wired in)."""
    runtime = SimpleNamespace(
        _handler=SimpleNamespace(stats=BatchStats()),
        dead_letters=SimpleNamespace(stats=DeadLetterStats()),
        store=SimpleNamespace(stats=EsSinkStats()),
        exporter=SimpleNamespace(stats=OtlpStats()),
        geoip=SimpleNamespace(stats=GeoIPStats()),
        canary_observer=SimpleNamespace(stats=CanaryStats()),
        request_metrics=RequestMetrics(),
        app=SimpleNamespace(_consumer=_Consumer(), tables=None),
    )
    telemetry = Telemetry(runtime)
    # A new stats source in Telemetry.sources() must be wired in above too.
    assert len(list(telemetry.sources())) == 6
    body, _ = asyncio.run(telemetry.render())
    names: set[str] = set()
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            name = name.removesuffix("_total") if kind == "counter" else name
            suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count"),
            }.get(kind, ("",))
            names.update(name + suffix for suffix in suffixes)
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABELS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords or label names)."""
    text = _STRING.sub('""', expr)
    text = _LABELS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; make debian-packages)")
    return path


def check_expressions(exprs: dict[str, str], workdir: Path) -> None:
    """Parse every expression with promtool (as recording rules); fail naming the broken one."""
    rules = [
        {"record": f"grayscope_check:expr_{n}", "expr": expr}
        for n, expr in enumerate(exprs.values())
    ]
    path = workdir / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(
            "promtool cannot parse:\n"
            + "\n".join(f"{where}: {expr}" for where, expr in exprs.items())
            + "\n"
            + done.stdout
            + done.stderr
        )
