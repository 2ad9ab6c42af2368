"""Canary analysis: live canary-vs-stable health per path group and a statistical verdict.

Pure core (no Kafka, Faust or HTTP here except ``client``, the reader of a
worker's ``/canary``): latency histograms, the anytime-valid statistics
(``evidence``), the rollout engine (``engine``), window placement, the
verdicts, record types, the text table and the HTML report; the
two-proportion Z-test describes a window (and is the simulator's baseline). The
Faust tables, agent and timer live in ``agents/canary.py``.
"""

from pipeline.canary.client import fetch_canary, fetch_verdicts, verdicts_from_payload
from pipeline.canary.config import CanaryConfig
from pipeline.canary.counters import CanaryStats
from pipeline.canary.format import format_verdicts
from pipeline.canary.observer import CanaryObserver, ObservedEvent
from pipeline.canary.records import ArmSummary, CanaryAggregate, Decision, Verdict, WindowCounts
from pipeline.canary.verdict import VerdictConfig, evaluate, judge
from pipeline.canary.ztest import ZTest, two_proportion_ztest

__all__ = [
    "ArmSummary",
    "CanaryAggregate",
    "CanaryConfig",
    "CanaryObserver",
    "CanaryStats",
    "Decision",
    "ObservedEvent",
    "Verdict",
    "VerdictConfig",
    "WindowCounts",
    "ZTest",
    "evaluate",
    "fetch_canary",
    "fetch_verdicts",
    "format_verdicts",
    "judge",
    "two_proportion_ztest",
    "verdicts_from_payload",
]
