"""Command safety core: limits, rate limits, non-finite detection, freshness and the hold gate."""

from __future__ import annotations

import numpy as np
import pytest

from qt_ros.control.safety import (
    CommandGate,
    Freshness,
    SafetyFilter,
    SafetyLimits,
    non_finite_dims,
)

NAMES = ("x", "yaw", "gripper")


def make_filter(max_change=(0.01, 0.1, 1.0)) -> SafetyFilter:
    return SafetyFilter(SafetyLimits.create(NAMES, (-0.02, -0.2, 0.0), (0.02, 0.2, 1.0),
                                            max_change))


def test_commands_are_clipped_to_the_limits_and_report_which():
    f = make_filter(max_change=(1.0, 1.0, 1.0))
    f.reset([0.0, 0.0, np.nan])
    out = f.apply([0.05, -0.1, 1.5])
    np.testing.assert_allclose(out.values, [0.02, -0.1, 1.0])
    assert out.clipped == ["x", "gripper"]
    assert out.rate_limited == []


def test_change_per_step_is_limited_from_the_previous_command_and_ramps_up():
    f = make_filter()
    f.reset([0.0, 0.0, np.nan])  # unknown gripper: its first step is not rate limited
    seen = [f.apply([0.02, 0.2, 1.0]).values for _ in range(3)]
    np.testing.assert_allclose(seen[0], [0.01, 0.1, 1.0])
    np.testing.assert_allclose(seen[1], [0.02, 0.2, 1.0])
    np.testing.assert_allclose(seen[2], [0.02, 0.2, 1.0])
    back = f.apply([-0.02, -0.2, 0.0])
    np.testing.assert_allclose(back.values, [0.01, 0.1, 0.0])
    assert back.rate_limited == ["x", "yaw"]


def test_reset_to_rest_after_a_hold_restarts_the_ramp():
    f = make_filter()
    f.reset([0.0, 0.0, 0.0])
    f.apply([0.01, 0.1, 0.0])
    f.apply([0.02, 0.2, 0.0])
    f.reset([0.0, 0.0, 0.0])
    np.testing.assert_allclose(f.apply([0.02, 0.2, 0.0]).values, [0.01, 0.1, 0.0])


def test_rate_limit_wins_over_limits_when_starting_outside_them():
    # An absolute target starting from a measured position beyond the limits moves towards
    # them by max_change instead of jumping.
    f = make_filter()
    f.reset([0.05, 0.0, 0.5])
    np.testing.assert_allclose(f.apply([0.0, 0.0, 0.5]).values, [0.04, 0.0, 0.5])


def test_random_sequences_never_violate_limits_or_max_change():
    rng = np.random.default_rng(0)
    f = make_filter()
    f.reset([0.0, 0.0, 0.0])
    previous = np.zeros(3)
    for _ in range(500):
        out = f.apply(rng.normal(0, 1, 3)).values
        assert np.all(out >= [-0.02, -0.2, 0.0]) and np.all(out <= [0.02, 0.2, 1.0])
        assert np.all(np.abs(out - previous) <= np.array([0.01, 0.1, 1.0]) + 1e-12)
        previous = out


def test_non_finite_commands_are_refused_not_clipped():
    f = make_filter()
    with pytest.raises(ValueError, match="non-finite command in dimension.*yaw"):
        f.apply([0.0, np.nan, 0.0])


ONES = (1.0, 1.0, 1.0)
ZEROS = (0.0, 0.0, 0.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lower=(0.0, 0.0), upper=ONES, max_change=ONES), "'lower' has 2 values"),
    (dict(lower=ZEROS, upper=(1.0, -1.0, 1.0), max_change=ONES), "'yaw'.*lower <= upper"),
    (dict(lower=ZEROS, upper=ONES, max_change=(1.0, 0.0, 1.0)), "'yaw'.*max_change > 0"),
    (dict(lower=ZEROS, upper=(np.inf, 1.0, 1.0), max_change=ONES), "'x'.*finite"),
])
def test_invalid_limits_say_which_dimension(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SafetyLimits.create(NAMES, **kwargs)


def test_non_finite_dims_checks_action_and_q_values():
    names = ["x", "y", "terminate"]
    assert non_finite_dims(names, [0.0, 1.0, 0.0], [0.5, 0.5, 0.5]) == []
    # NaN Q values with a finite action: the arg-max of NaNs still picks a bin.
    assert non_finite_dims(names, [0.0, 1.0, 0.0], [np.nan, 0.5, np.inf]) == ["x", "terminate"]
    assert non_finite_dims(names, [np.inf, 1.0, 0.0], None) == ["x"]


def test_freshness_reports_missing_then_stale_inputs():
    fresh = Freshness()
    fresh.watch("image", 0.5)
    fresh.watch("instruction", 0.0, missing="waiting for an instruction")
    assert fresh.problems(10.0) == ["waiting for the first image", "waiting for an instruction"]
    fresh.mark("image", 10.0)
    fresh.mark("instruction", 10.0)
    assert fresh.problems(10.4) == []
    assert fresh.problems(10.6) == ["no image for more than 0.5 s"]
    assert fresh.problems(1000.0) == ["no image for more than 0.5 s"]  # instruction: never expires
    fresh.mark("image", 10.7)
    assert fresh.problems(10.8) == []
    assert fresh.age("image", 10.8) == pytest.approx(0.1)


def test_gate_holds_once_and_logs_once_per_reason():
    gate = CommandGate()
    first = gate.block("waiting for the first image")
    assert not first.hold and first.log == "not commanding: waiting for the first image"
    again = gate.block("waiting for the first image")
    assert not again.hold and again.log is None
    assert gate.commanded().log == "commanding (was: waiting for the first image)"
    assert gate.commanded().log is None
    stop = gate.block("no image for more than 0.5 s")
    assert stop.hold and stop.log == "holding: no image for more than 0.5 s"
    # Every later tick with the same reason: no second hold, no second log line.
    for _ in range(10):
        quiet = gate.block("no image for more than 0.5 s")
        assert not quiet.hold and quiet.log is None
    other = gate.block("disabled")
    assert not other.hold and other.log == "not commanding: disabled"
