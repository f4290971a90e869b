"""The Wilson score interval against published values (statsmodels'
``proportion_confint(method="wilson")``), its closed forms at 0/n and n/n, and its definition:
the bounds are the p where the score test just fails, (k/n - p)^2 = z^2 p (1 - p) / n."""

from __future__ import annotations

import pytest

from qt_ros.evaluation.intervals import Z_95, wilson_interval


@pytest.mark.parametrize("successes, trials, low, high", [
    (0, 10, 0.0, 0.277533),
    (5, 10, 0.236593, 0.763407),
    (10, 10, 0.722467, 1.0),
    (1, 20, 0.008881, 0.236131),
    (50, 100, 0.403832, 0.596168),
])
def test_wilson_matches_known_values(successes, trials, low, high):
    got = wilson_interval(successes, trials)
    assert got == pytest.approx((low, high), abs=2e-6)


def test_closed_forms_at_the_ends():
    # 0/n: the upper bound is z^2 / (n + z^2); n/n mirrors it.
    for n in (1, 7, 30):
        assert wilson_interval(0, n) == pytest.approx((0.0, Z_95 ** 2 / (n + Z_95 ** 2)))
        assert wilson_interval(n, n) == pytest.approx((n / (n + Z_95 ** 2), 1.0))


@pytest.mark.parametrize("successes, trials", [(1, 20), (18, 20), (6, 30), (23, 30), (3, 7)])
def test_bounds_solve_the_score_equation(successes, trials):
    rate = successes / trials
    for p in wilson_interval(successes, trials):
        assert (rate - p) ** 2 == pytest.approx(Z_95 ** 2 * p * (1 - p) / trials, rel=1e-9)


def test_the_interval_brackets_the_rate_and_narrows_with_more_episodes():
    for n in (5, 20, 80):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0
    widths = [(lambda lh: lh[1] - lh[0])(wilson_interval(n // 2, n)) for n in (10, 40, 160)]
    assert widths[0] > widths[1] > widths[2]


@pytest.mark.parametrize("successes, trials", [(0, 0), (3, 2), (-1, 5)])
def test_impossible_counts_are_refused(successes, trials):
    with pytest.raises(ValueError):
        wilson_interval(successes, trials)
