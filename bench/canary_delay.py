"""Where grayscope's detection delay goes: the simulator's engine with ingredients toggled.

Runs only the grayscope engine of ``grayscope canary simulate`` on its A/B
scenarios (and A/A for the false rollbacks) once per variant, each on the
same seed, and prints per variant the median delay over the oracle SPRT's
per scenario, the pooled median, the share within 3x and the A/A false
rollbacks. The oracle is the harness's (latency against a canary exactly the
threshold slower); "vs no change" is the first harness's oracle (latency
against no change at all).

    nice -n 10 .venv/bin/python -m bench.canary_delay --rollouts 100 --aa 200
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from pipeline.canary import engine, simulate
from pipeline.canary.simulate import Knobs

BASE = Knobs(baselines=False, promotions=False)
VARIANTS: dict[str, Knobs] = {
    "engine (defaults: 6 folds per window)": BASE,
    "whole windows only (one fold per window)": replace(BASE, slices=1),
    "psi0 = 1.0": replace(BASE, psi0=1.0),
    "pooled only (no per-group share)": replace(BASE, pooled_share=1.0),
    "5xx family only (error weight 1)": replace(BASE, error_weight=1.0),
    "latency family only (error weight 0)": replace(BASE, error_weight=0.0),
    "no latency gate (then +50 ms rolls back)": replace(BASE, latency_gate=False),
    "one mixture component, at the x1.5 truth (not a method)": replace(BASE, offsets=(6,)),
    "16 folds per window": replace(BASE, slices=16),
    # A funnel configured: the path groups keep 1 - FUNNEL_SHARE of the rollout's evidence
    # (the funnels' own figures: simulate.simulate_funnels).
    "a funnel configured, funnels at a quarter (before issue 17's funnel change)": replace(
        BASE, funnel_share=0.25
    ),
    "a funnel configured, funnels at half (engine.FUNNEL_SHARE)": replace(
        BASE, funnel_share=engine.FUNNEL_SHARE
    ),
}


def measure(knobs: Knobs, rollouts: int, aa: int, seed: int, alpha: float) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    aa_scenario, ab = simulate.scenarios()
    out: dict[str, Any] = {}
    if aa:
        a = simulate._chunked(aa_scenario, aa, rng, alpha, knobs)
        out["aa_false_rollbacks"] = int((a.rollback_window["grayscope"] >= 0).sum())
    ratios: list[float] = []
    old: list[float] = []
    for scenario in ab:
        o = simulate._chunked(scenario, rollouts, rng, alpha, knobs)
        fired = o.rollback_window["grayscope"] >= 0
        assert o.oracle_requests is not None
        ratio = np.where(fired, o.delay_requests["grayscope"] / o.oracle_requests, np.inf)
        out[scenario.name] = round(float(np.median(ratio)), 2)
        if scenario.is_regression:
            ratios.extend(ratio.tolist())
            assert o.oracle_no_change is not None
            before = np.where(fired, o.delay_requests["grayscope"] / o.oracle_no_change, np.inf)
            old.extend(before.tolist())
            out[f"{scenario.name} (vs no change)"] = round(float(np.median(before)), 2)
    values = np.array(ratios)
    out["median"] = round(float(np.median(values)), 2)
    out["within_3x"] = round(float((values <= 3.0).mean()), 3)
    out["median (vs no change)"] = round(float(np.median(old)), 2)
    out["within_3x (vs no change)"] = round(float((np.array(old) <= 3.0).mean()), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=100, help="A/B rollouts per scenario")
    parser.add_argument("--aa", type=int, default=200, help="A/A rollouts (0: skip)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--only", action="append", help="variant names to run (default all)")
    args = parser.parse_args(argv)
    result = {
        name: measure(knobs, args.rollouts, args.aa, args.seed, args.alpha)
        for name, knobs in VARIANTS.items()
        if not args.only or name in args.only
    }
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
