"""The demo's staged rollout plan."""

from __future__ import annotations

import itertools

import pytest

from pipeline.dev.demo.stages import DEFAULT_ROLLOUT, Stage, plan_stages, share_label, stage_at


def test_default_rollout_is_1_5_50_percent_over_the_duration() -> None:
    stages = plan_stages(60)
    assert [s.label for s in stages] == ["1%", "5%", "50%"]
    assert [s.canary_share for s in stages] == [0.01, 0.05, 0.5]
    assert [(s.start, s.seconds) for s in stages] == [(0.0, 12.0), (12.0, 18.0), (30.0, 30.0)]
    assert [s.index for s in stages] == [0, 1, 2]


def test_stages_leave_no_gap_and_end_exactly_at_the_duration() -> None:
    stages = plan_stages(7.3, ((0.1, 1), (0.2, 1), (0.3, 1)))
    for before, after in itertools.pairwise(stages):
        assert after.start == before.end
    assert stages[0].start == 0.0
    assert stages[-1].end == 7.3


def test_fractions_are_relative_weights() -> None:
    stages = plan_stages(10, ((0.5, 3), (1.0, 1)))
    assert [s.seconds for s in stages] == pytest.approx([7.5, 2.5])


@pytest.mark.parametrize(
    ("duration", "rollout"),
    [
        (0, DEFAULT_ROLLOUT),
        (-5, DEFAULT_ROLLOUT),
        (10, ()),
        (10, ((0.1, 0),)),
        (10, ((1.5, 1),)),
    ],
)
def test_invalid_plans(duration: float, rollout: tuple[tuple[float, float], ...]) -> None:
    with pytest.raises(ValueError):
        plan_stages(duration, rollout)


def test_stage_at() -> None:
    stages = plan_stages(10)
    assert stage_at(stages, -0.1) is None
    assert stage_at(stages, 0.0) == stages[0]
    assert stage_at(stages, 1.999) == stages[0]
    assert stage_at(stages, 2.0) == stages[1]
    assert stage_at(stages, 9.99) == stages[2]
    assert stage_at(stages, 10.0) is None


def test_share_labels() -> None:
    assert share_label(0.01) == "1%"
    assert share_label(0.5) == "50%"
    assert share_label(1.0) == "100%"
    assert share_label(0.025) == "2.5%"
    assert share_label(0.0) == "0%"
    assert Stage(0, 0.05, 0.0, 1.0).label == "5%"
