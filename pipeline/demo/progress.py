"""The demo's progress lines. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.dev.demo.stages import Stage
from pipeline.commands.produce import format_count, format_duration, format_rate


@dataclass(frozen=True, slots=True)
class Counts:
    """What the pipeline has done so far; None = not known (yet)."""

    indexed: int | None = None  # documents in the store
    spans: int = 0  # spans the OTLP receiver got
    consumed: int | None = None  # messages the worker finished (stored or dead-lettered)
    dead_lettered: int | None = None


def _known(value: int | None) -> str:
    return "?" if value is None else format_count(value)


def traffic_line(
    stage: Stage | None,
    stages: int,
    elapsed: float,
    duration: float,
    produced: int,
    rate: float,
    counts: Counts,
) -> str:
    where = f"stage {stage.index + 1}/{stages} canary {stage.label}" if stage else "traffic"
    return (
        f"{where}  {format_duration(elapsed)}/{format_duration(duration)}  "
        f"produced {format_count(produced)} ({format_rate(rate)})  "
        f"indexed {_known(counts.indexed)}  spans {format_count(counts.spans)}"
    )


def drain_line(produced: int, counts: Counts, waited: float) -> str:
    return (
        f"draining  consumed {_known(counts.consumed)}/{format_count(produced)}  "
        f"indexed {_known(counts.indexed)}  spans {format_count(counts.spans)}  "
        f"{format_duration(waited)}"
    )


def drained(produced: int, counts: Counts) -> bool:
    """Whether the worker has finished every produced message."""
    return counts.consumed is not None and counts.consumed >= produced
