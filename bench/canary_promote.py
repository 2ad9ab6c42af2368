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

Then the one-group scenarios (``simulate.one_group_scenarios``: one path group's 5xx
odds x1.5/x2/x5 at a 0.1 % base rate, the fifth busiest group or the busiest, the
others healthy), drawn after the others (whose figures stay those of the same
arguments without them): per rule the regressed group's wrong promotions (promoted
before the rollback) per scenario and pooled, with the 95 % upper bound; the
rollback's share (the same for every rule) under ``one_group_rollback``.

    nice -n 10 .venv/bin/python -m bench.canary_promote --rollouts 100 --aa 200
    nice -n 10 .venv/bin/python -m bench.canary_promote --rollouts 100 --aa 200 --table
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


def _relative(floor: float, factor: float, *, lower: bool = False) -> PromoteRule:
    """The group's increase within a margin scaled by its stable 5xx rate (the upper bound
    of it, or the lower one), never below ``floor`` nor above the absolute margin."""

    def rule(f: PromoteFacts) -> np.ndarray:
        stable = f.stable_rate_lower if lower else f.stable_rate_upper
        assert stable is not None
        margin = np.minimum(MARGIN, np.maximum(floor, factor * stable))
        return np.asarray(f.increase_upper <= margin)

    return rule


def _quiet(e_value: float) -> PromoteRule:
    """The group's own 5xx e-value (the rollback's evidence) at most ``e_value``: its
    evidence does not lean towards a regression (a healthy group's drifts down; one with
    no errors stays at 1)."""

    def rule(f: PromoteFacts) -> np.ndarray:
        assert f.group_error_log_e is not None
        return np.asarray(f.group_error_log_e <= math.log(e_value) + 1e-12)

    return rule


#: The engine's pooled condition: the pooled ratio or, errors too rare, the canary's rate.
ENGINE_POOLED = _either(_pooled(1.5), _pooled_floor(0.0001))


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
    "(p) pooled ratio <= 1.5 or canary rate <= 0.01 %, increase <= 0.5 pp (engine before)": _both(
        _either(_pooled(1.5), _pooled_floor(0.0001)), _margin(MARGIN)
    ),
    "(p+a) pooled ratio <= 1.5, group ratio <= 3, increase <= 0.5 pp": _both(
        _pooled(1.5), _ratio(3.0), _margin(MARGIN)
    ),
    # The engine's pooled condition and margin, and a per-group condition on top.
    "(e) engine, and group ratio <= 2 or increase <= 0.05 pp": _both(
        ENGINE_POOLED, _margin(MARGIN), _either(_ratio(2.0), _margin(0.0005))
    ),
    "(e) engine, and group ratio <= 2 or increase <= 0.1 pp": _both(
        ENGINE_POOLED, _margin(MARGIN), _either(_ratio(2.0), _margin(0.001))
    ),
    "(e) engine, and group ratio <= 3 or increase <= 0.05 pp": _both(
        ENGINE_POOLED, _margin(MARGIN), _either(_ratio(3.0), _margin(0.0005))
    ),
    "(e) engine, and group ratio <= 3 or increase <= 0.1 pp": _both(
        ENGINE_POOLED, _margin(MARGIN), _either(_ratio(3.0), _margin(0.001))
    ),
    "(e) engine, and group ratio <= 4 or increase <= 0.1 pp": _both(
        ENGINE_POOLED, _margin(MARGIN), _either(_ratio(4.0), _margin(0.001))
    ),
    # The margin scaled by the group's stable rate: min(0.5 pp, max(floor, k x stable)).
    "(r) engine pooled, increase <= max(0.05 pp, 0.5 x stable upper)": _both(
        ENGINE_POOLED, _relative(0.0005, 0.5)
    ),
    "(r) engine pooled, increase <= max(0.05 pp, 1 x stable upper)": _both(
        ENGINE_POOLED, _relative(0.0005, 1.0)
    ),
    "(r) engine pooled, increase <= max(0.1 pp, 1 x stable upper)": _both(
        ENGINE_POOLED, _relative(0.001, 1.0)
    ),
    "(r) engine pooled, increase <= max(0.05 pp, 2 x stable upper)": _both(
        ENGINE_POOLED, _relative(0.0005, 2.0)
    ),
    "(r) engine pooled, increase <= max(0.05 pp, 1 x stable lower)": _both(
        ENGINE_POOLED, _relative(0.0005, 1.0, lower=True)
    ),
    "(r) engine pooled, increase <= max(0.05 pp, 2 x stable lower)": _both(
        ENGINE_POOLED, _relative(0.0005, 2.0, lower=True)
    ),
    "(r) engine pooled, increase <= max(0.1 pp, 0.5 x stable upper)": _both(
        ENGINE_POOLED, _relative(0.001, 0.5)
    ),
    "(r) engine pooled, increase <= max(0.05 pp, 0.5 x stable lower)": _both(
        ENGINE_POOLED, _relative(0.0005, 0.5, lower=True)
    ),
    "(r) engine pooled, increase <= max(0.1 pp, 0.5 x stable lower)": _both(
        ENGINE_POOLED, _relative(0.001, 0.5, lower=True)
    ),
    "(r) engine pooled, increase <= max(0.1 pp, 1 x stable lower)": _both(
        ENGINE_POOLED, _relative(0.001, 1.0, lower=True)
    ),
    "(r) engine pooled, increase <= max(0.05 pp, 1.5 x stable upper)": _both(
        ENGINE_POOLED, _relative(0.0005, 1.5)
    ),
    # The group's own rollback evidence must not lean towards a regression.
    "(g) engine before, and group's 5xx e-value <= 1 (the engine)": _both(
        ENGINE_POOLED, _margin(MARGIN), _quiet(1.0)
    ),
    "(g) engine, and group's 5xx e-value <= 2": _both(ENGINE_POOLED, _margin(MARGIN), _quiet(2.0)),
    "(g) engine, and group's 5xx e-value <= 4": _both(ENGINE_POOLED, _margin(MARGIN), _quiet(4.0)),
    "(g+r) engine pooled, e-value <= 2, increase <= max(0.05 pp, 2 x stable upper)": _both(
        ENGINE_POOLED, _quiet(2.0), _relative(0.0005, 2.0)
    ),
    "(g+e) engine, e-value <= 2, and group ratio <= 4 or increase <= 0.1 pp": _both(
        ENGINE_POOLED, _margin(MARGIN), _quiet(2.0), _either(_ratio(4.0), _margin(0.001))
    ),
    "(r|e) engine pooled, increase <= max(0.05 pp, 1 x stable upper) or group ratio <= 2": _both(
        ENGINE_POOLED, _margin(MARGIN), _either(_relative(0.0005, 1.0), _ratio(2.0))
    ),
}


def measure(rollouts: int, aa: int, seed: int, alpha: float) -> dict[str, Any]:
    knobs = replace(Knobs(baselines=False), promote_rules=tuple(CANDIDATES.items()))
    rng = np.random.default_rng(seed)
    aa_scenario, ab = simulate.scenarios()
    a = simulate._chunked(aa_scenario, aa, rng, alpha, knobs)
    false = int((a.rollback_window["grayscope"] >= 0).sum())
    outcomes = [(s, simulate._chunked(s, rollouts, rng, alpha, knobs)) for s in ab]
    one_group = [
        (s, simulate._chunked(s, rollouts, rng, alpha, knobs))
        for s in simulate.one_group_scenarios()
    ]
    result: dict[str, Any] = {
        "aa_rollouts": aa,
        "aa_false_rollbacks": false,
        "aa_false_rollback_upper95": round(evidence.clopper_pearson_upper(false, aa), 4),
        "ab_rollouts_per_scenario": rollouts,
        "one_group_rollback": {
            s.name: {
                key: simulate.one_group_figures(s, out)[key]
                for key in ("rollback_fraction", "rollback_named_fraction", "median_delay_ratio")
            }
            for s, out in one_group
        },
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
        wrong = total = 0
        one: dict[str, float] = {}
        for scenario, out in one_group:
            figures = simulate.one_group_figures(scenario, out, name)
            one[scenario.name] = figures["wrong_promotion_rate"]
            wrong += figures["wrong_promotions"]
            total += figures["rollouts"]
        row["one_group_wrong_promotions"] = wrong
        row["one_group_wrong_promotion_rate"] = round(wrong / total, 4)
        row["one_group_wrong_promotion_upper95"] = round(
            evidence.clopper_pearson_upper(wrong, total), 4
        )
        row["one_group_wrong_promotion_by_scenario"] = one
        result["rules"][name] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=100, help="A/B rollouts per scenario")
    parser.add_argument("--aa", type=int, default=200, help="A/A rollouts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--table", action="store_true", help="print markdown tables")
    args = parser.parse_args(argv)
    result = measure(args.rollouts, args.aa, args.seed, args.alpha)
    if args.table:
        sys.stdout.write(format_tables(result))
    else:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _window(value: float | None) -> str:
    return "never" if value is None else f"{value:g}"


def _count(wrong: int, total: int, rate: float, upper: float) -> str:
    return f"{wrong}/{total} ({rate * 100:.1f} %, {upper * 100:.1f} %)"


def format_tables(result: dict[str, Any]) -> str:
    """Two markdown tables: healthy promotion and all-groups wrong promotions; the one-group
    scenarios' wrong promotions."""
    ab_total = result["ab_rollouts_per_scenario"] * 5  # the regressions: x1.5, x2, x5, +250, +400
    one = result["one_group_rollback"]
    one_total = result["ab_rollouts_per_scenario"] * len(one)
    lines = [
        f"A/A false rollbacks (every rule): {result['aa_false_rollbacks']}/{result['aa_rollouts']}"
        f" (95 % upper {result['aa_false_rollback_upper95'] * 100:.1f} %)",
        "",
        "| promote rule | A/A promoted | first promote (window) | groups / traffic promoted"
        " | half the traffic promoted (window) | wrong promotions, all groups (95 % upper)"
        " | wrong promotions, one group (95 % upper) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rules"].items():
        all_groups = _count(
            row["ab_wrong_promotions"],
            ab_total,
            row["ab_wrong_promotion_rate"],
            row["ab_wrong_promotion_upper95"],
        )
        one_group = _count(
            row["one_group_wrong_promotions"],
            one_total,
            row["one_group_wrong_promotion_rate"],
            row["one_group_wrong_promotion_upper95"],
        )
        lines.append(
            f"| {name} | {row['aa_promoted'] * 100:.0f} %"
            f" | {_window(row['aa_first_promote_median_window'])}"
            f" | {row['aa_groups_promoted'] * 100:.0f} % / {row['aa_traffic_promoted'] * 100:.1f} %"
            f" | {_window(row['aa_half_traffic_promoted_median_window'])}"
            f" | {all_groups} | {one_group} |"
        )
    names = list(one)
    lines += [
        "",
        "| promote rule | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| rolled back (every rule) | "
        + " | ".join(f"{one[n]['rollback_fraction'] * 100:.0f} %" for n in names)
        + " |",
    ]
    for name, row in result["rules"].items():
        by = row["one_group_wrong_promotion_by_scenario"]
        lines.append(f"| {name} | " + " | ".join(f"{by[n] * 100:.0f} %" for n in names) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
