"""Two-proportion Z-test (pure; the standard library's ``math.erfc`` is the normal tail).

The canary question is one-sided: *is the canary's error rate higher than
stable's?* With ``x`` errors out of ``n`` requests per arm, the pooled rate
``p = (x_c + x_s) / (n_c + n_s)`` gives the standard error under H0 (equal
rates), ``se = sqrt(p (1 - p) (1/n_c + 1/n_s))``, and ``z = (x_c/n_c - x_s/n_s) / se``.
The p-value is the upper normal tail ``P(Z >= z)``. This is what
``statsmodels.stats.proportion.proportions_ztest(..., alternative="larger")``
computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class ZTest:
    z: float
    p_value: float  # one-sided, H1: canary rate > stable rate
    p_value_two_sided: float


def normal_sf(z: float) -> float:
    """Upper tail of the standard normal, ``P(Z >= z)``, accurate far into the tail."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_proportion_ztest(errors_a: int, total_a: int, errors_b: int, total_b: int) -> ZTest:
    """Z-test of ``errors_a/total_a > errors_b/total_b`` (a = canary, b = stable).

    Both totals must be positive. When the pooled rate is 0 or 1 there is no
    variance and the observed rates are equal: z is 0 and the one-sided
    p-value 0.5 (the limit of the formula), i.e. no evidence either way.
    """
    if total_a <= 0 or total_b <= 0:
        raise ValueError("both arms need at least one request")
    if not (0 <= errors_a <= total_a and 0 <= errors_b <= total_b):
        raise ValueError("error counts must lie between 0 and the request count")
    rate_a = errors_a / total_a
    rate_b = errors_b / total_b
    pooled = (errors_a + errors_b) / (total_a + total_b)
    variance = pooled * (1.0 - pooled) * (1.0 / total_a + 1.0 / total_b)
    if variance <= 0.0:
        return ZTest(0.0, 0.5, 1.0)
    z = (rate_a - rate_b) / math.sqrt(variance)
    return ZTest(z, normal_sf(z), min(1.0, 2.0 * normal_sf(abs(z))))
