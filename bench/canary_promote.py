"""Promote rules compared on the simulator's rollouts (the same draws for every rule).

Runs ``grayscope canary simulate``'s world (A/A and the A/B scenarios) once and
judges, beside the engine's promote rule, each candidate rule on the same
data: the exposure and latency conditions are the engine's, the 5xx condition
is the rule's. Per rule: the A/A rollouts with a promote (any path group), the
window (of 120) of the first promote, the group's canary requests then, the
share of the traffic whose groups are promoted by the rollout's end, the
window by which half of it is; wrong promotions per A/B scenario (a promote for
any path group before the rollback) and pooled over the regressions with a 95 %
Clopper-Pearson upper bound. The rollback rule is the engine's in every case
(its A/A false rollbacks are one figure for all rules).

    nice -n 10 .venv/bin/python -m bench.canary_promote --rollouts 100 --aa 200
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from pipeline.canary import engine, evidence, simulate
from pipeline.canary.simulate import Knobs, PromoteFacts, PromoteRule

PSI0 = engine.VerdictConfig().psi0


def _ratio(psi: float) -> PromoteRule:
    return lambda f: np.asarray(f.ratio_upper <= psi * (1 + 1e-9))


def _margin(margin: float) -> PromoteRule:
    return lambda f: np.asarray(f.increase_upper <= margin)


def _pooled(psi: float) -> PromoteRule:
    return lambda f: np.asarray(f.pooled_ratio_upper <= psi * (1 + 1e-9))


def _informed(psi1: float, factor: float) -> PromoteRule:
    """The pooled rollback test would by now expect ``factor`` ln(1/alpha) of evidence
    against a x psi1 regression (observed information, a normal approximation)."""
    need = factor * math.log(1.0 / 0.05)
    gap = (math.log(psi1) - math.log(PSI0)) ** 2 / 2.0
    return lambda f: np.asarray(f.pooled_information * gap >= need)


def _both(*rules: PromoteRule) -> PromoteRule:
    def rule(f: PromoteFacts) -> np.ndarray:
        out = rules[0](f)
        for other in rules[1:]:
            out = out & other(f)
        return np.asarray(out)

    return rule


def _either(*rules: PromoteRule) -> PromoteRule:
    def rule(f: PromoteFacts) -> np.ndarray:
        out = rules[0](f)
        for other in rules[1:]:
            out = out | other(f)
        return np.asarray(out)

    return rule


MARGIN = engine.VerdictConfig().promote_error_margin
def _pooled_floor(floor: float) -> PromoteRule:
    return lambda f: np.asarray(f.pooled_canary_rate_upper <= floor)


CANDIDATES: dict[str, PromoteRule] = {
    "absolute: increase <= 0.5 pp (before)": _margin(MARGIN),
    "(a) group ratio <= 1.1 (psi0)": _ratio(1.1),
    "(a) group ratio <= 1.5": _ratio(1.5),
    "(a) group ratio <= 2": _ratio(2.0),
    "(b) group ratio <= 1.5 or increase <= 0.05 pp": _either(_ratio(1.5), _margin(0.0005)),
    "(b) group ratio <= 1.5 or increase <= 0.1 pp": _either(_ratio(1.5), _margin(0.001)),
    "(c) pooled test powered for x1.5 (1 x ln 1/alpha), increase <= 0.5 pp": _both(
        _informed(1.5, 1.0), _margin(MARGIN)
    ),
    "(c) pooled test powered for x1.5 (3 x ln 1/alpha), increase <= 0.5 pp": _both(
        _informed(1.5, 3.0), _margin(MARGIN)
    ),
    "(p) pooled ratio <= 1.25, increase <= 0.5 pp": _both(_pooled(1.25), _margin(MARGIN)),
    "(p) pooled ratio <= 1.4, increase <= 0.5 pp": _both(_pooled(1.4), _margin(MARGIN)),
    "(p) pooled ratio <= 1.5, increase <= 0.5 pp": _both(_pooled(1.5), _margin(MARGIN)),
    "(p) pooled ratio <= 2, increase <= 0.5 pp": _both(_pooled(2.0), _margin(MARGIN)),
    "(p) pooled ratio <= 1.5 or canary rate <= 0.01 %, increase <= 0.5 pp (engine)": _both(
        _either(_pooled(1.5), _pooled_floor(0.0001)), _margin(MARGIN)
    ),
    "(p+a) pooled ratio <= 1.5, group ratio <= 3, increase <= 0.5 pp": _both(
        _pooled(1.5), _ratio(3.0), _margin(MARGIN)
    ),
}


def measure(rollouts: int, aa: int, seed: int, alpha: float) -> dict[str, Any]:
    knobs = replace(
        Knobs(baselines=False), promote_rules=tuple(CANDIDATES.items())
    )
    rng = np.random.default_rng(seed)
    aa_scenario, ab = simulate.scenarios()
    a = simulate._chunked(aa_scenario, aa, rng, alpha, knobs)
    false = int((a.rollback_window["grayscope"] >= 0).sum())
    outcomes = [(s, simulate._chunked(s, rollouts, rng, alpha, knobs)) for s in ab]
    result: dict[str, Any] = {
        "aa_rollouts": aa,
        "aa_false_rollbacks": false,
        "aa_false_rollback_upper95": round(evidence.clopper_pearson_upper(false, aa), 4),
        "ab_rollouts_per_scenario": rollouts,
        "rules": {},
    }
    for name in CANDIDATES:
        row = {
            "aa_promoted": round(float((a.group_promote[name] >= 0).any(axis=1).mean()), 4),
            **simulate.aa_promotion(a.group_promote[name], a.group_promote_requests[name]),
        }
        wrong = total = 0
        by: dict[str, float] = {}
        for scenario, out in outcomes:
            promoted = (out.group_promote[name] >= 0).any(axis=1)
            by[scenario.name] = round(float(promoted.mean()), 4)
            if scenario.is_regression:
                wrong += int(promoted.sum())
                total += promoted.size
        row["ab_wrong_promotions"] = wrong
        row["ab_wrong_promotion_rate"] = round(wrong / total, 4)
        row["ab_wrong_promotion_upper95"] = round(evidence.clopper_pearson_upper(wrong, total), 4)
        row["ab_promote_fraction_by_scenario"] = by
        result["rules"][name] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=100, help="A/B rollouts per scenario")
    parser.add_argument("--aa", type=int, default=200, help="A/A rollouts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args(argv)
    result = measure(args.rollouts, args.aa, args.seed, args.alpha)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
