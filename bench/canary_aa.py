"""The live worker's canary decisions, replayed without a broker (issue 17, item 7).

Synthetic traffic (``pipeline.dev.synth``, the demo's seven path groups) goes
through the real enrichment (``pipeline.core.process_batch``), the batch
handler's hook (``canary.observer.aggregate``) and, on a simulated clock, the
worker's decision path exactly as ``agents/canary.py`` runs it: every interval
the verdicts are evaluated from the window tables and the rollout states,
folding what each window gained since (the timer), and those folds are
persisted into the states (the agent, through a control record). Kafka and
Faust only carry these records; they decide nothing.

    .venv/bin/python -m bench.canary_aa                 # A/A: 90 s at 5,000 events/s
    .venv/bin/python -m bench.canary_aa --demo-seeds 20 # the demo's regression, 20 seeds

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

import orjson

from pipeline.canary.counters import CanaryStats
from pipeline.canary.engine import Fold, GroupState, VerdictConfig
from pipeline.canary.observer import aggregate
from pipeline.canary.records import Decision, WindowCounts
from pipeline.canary.verdict import evaluate
from pipeline.config import Settings, enrich_context
from pipeline.core.model import InputMessage, KafkaCoordinates
from pipeline.core.process import observations, process_batch
from pipeline.dev.synth import DEFAULT_START_NS, PATH_RULES, Regression, generate, synthetic_clock

NS = 1_000_000_000
LAG_S = 1.0  # aggregates reach the tables about a flush interval after the request


def replay(
    *,
    seconds: float,
    rate: float,
    window: int,
    interval: float,
    canary_share: float,
    regression: Regression | None,
    seed: int,
    config: VerdictConfig,
) -> dict[str, Any]:
    settings = Settings(path_rules=orjson.dumps(list(PATH_RULES)).decode())
    ctx = enrich_context(settings, None)
    events = generate(
        int(seconds * rate),
        seed,
        canary_share=canary_share,
        regression=regression,
        clock=synthetic_clock(DEFAULT_START_NS, rate),
    )
    stats = CanaryStats()
    tables: dict[tuple[str, str, int], WindowCounts] = {}
    states: dict[str, GroupState] = {}
    decisions: Counter[str] = Counter()
    judged: set[tuple[str, int]] = set()
    rollback_pairs: set[tuple[str, int]] = set()
    rolled_back: dict[str, float] = {}
    next_tick = DEFAULT_START_NS / NS + interval
    expires = window * 10.0
    batch: list[bytes] = []

    def tick(now: float) -> None:
        # The timer: evaluate, folding what the windows gained since the last time.
        rows = [(g, s, start, c) for (g, s, start), c in tables.items()]
        folds: dict[str, Fold] = {}
        verdicts = evaluate(
            rows,
            [],
            config,
            window_seconds=window,
            expires_seconds=expires,
            now=now,
            states=dict(states),
            folds=folds,
        )
        # The agent: persist exactly those folds (the control records).
        for group, fold in folds.items():
            state = states.setdefault(group, GroupState(group))
            fold.apply(state, window, config.psi0)
        for verdict in verdicts:
            decisions[verdict.decision.value] += 1
            judged.add((verdict.path_group, verdict.window_start))
            if verdict.decision is Decision.ROLLBACK:
                rollback_pairs.add((verdict.path_group, verdict.window_start))
                rolled_back.setdefault(verdict.path_group, now - DEFAULT_START_NS / NS)
                state = states.get(verdict.path_group)
                if state is not None:  # the control record, applied by the agent
                    state.rolled_back = True

    def flush() -> None:
        nonlocal next_tick
        results = process_batch(batch, ctx)
        messages = [
            InputMessage(raw, None, KafkaCoordinates("t", 0, i)) for i, raw in enumerate(batch)
        ]
        observed_events = observations(messages, results)
        for agg in aggregate(observed_events, window, stats):
            for stage, counts in agg.by_stage.items():
                key = (agg.path_group, stage, agg.window_start)
                existing = tables.get(key)
                if existing is None:
                    tables[key] = counts.copy()
                else:
                    existing.merge(counts)
        last = max((e[1] or 0) for e in observed_events) / NS if observed_events else 0.0
        batch.clear()
        while next_tick + LAG_S <= last:
            tick(next_tick)
            next_tick += interval

    for raw in events:
        batch.append(raw)
        if len(batch) >= 2000:
            flush()
    if batch:
        flush()
    end = DEFAULT_START_NS / NS + seconds
    while next_tick <= end + 3 * window:
        tick(next_tick)
        next_tick += interval
    return {
        "events": int(seconds * rate),
        "verdicts": dict(decisions),
        "judged_pairs": len(judged),
        "rollback_pairs": len(rollback_pairs),
        "rolled_back_groups": sorted(rolled_back),
        "first_rollback_after_s": {k: round(v, 1) for k, v in sorted(rolled_back.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument(
        "--demo-seeds", type=int, default=0, help="instead: the demo's regression over N seeds"
    )
    args = parser.parse_args(argv)
    config = VerdictConfig(alpha=args.alpha)
    common: dict[str, Any] = {
        "rate": args.rate,
        "window": args.window,
        "interval": args.interval,
        "config": config,
    }
    if args.demo_seeds:
        runs = []
        for seed in range(1, args.demo_seeds + 1):
            out = replay(
                seconds=60.0,
                canary_share=0.3,
                regression=Regression(),
                seed=seed,
                **{**common, "window": 10, "interval": 2.0, "rate": 2000.0},
            )
            runs.append(out["rolled_back_groups"])
        report = {
            "demo_seeds": args.demo_seeds,
            "regressed_group_rolled_back": sum("/play/share" in r for r in runs),
            "other_groups_rolled_back": sum(any(g != "/play/share" for g in r) for r in runs),
            "runs": runs,
        }
    else:
        report = replay(
            seconds=args.seconds,
            canary_share=args.share,
            regression=None,
            seed=args.seed,
            **common,
        )
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
