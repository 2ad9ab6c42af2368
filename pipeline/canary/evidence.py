"""Anytime-valid statistics of the canary analysis (pure; standard library only).

Everything here stays valid when it is looked at after every window, for as
long as a rollout lasts (Ville's inequality: a nonnegative supermartingale
that starts at 1 exceeds ``1/alpha`` at *any* time with probability at most
``alpha``). The pieces:

**Stratified rate-ratio e-process** (5xx rate; requests slower than a latency
threshold). Each window gives a 2x2 table: canary/stable x event/other. Given
the window's margins -- ``n1`` canary and ``n0`` stable requests, ``m``
events in both arms together -- the canary's share of the events is
``x ~ Bin(m, theta(psi))`` with ``theta(psi) = pi psi / (pi psi + 1 - pi)``,
``pi = n1 / (n1 + n0)`` and ``psi`` the canary/stable rate ratio. For rare
events (5xx) that is exact under the Poisson model and the rate ratio equals
the odds ratio; when canary and stable are identical (``psi = 1``) ``x`` is
hypergeometric, which is smaller than that binomial in the convex order
(Hoeffding 1963), so every likelihood ratio below keeps expectation <= 1
without the rare-event approximation. Conditioning on each window's margins
makes the test immune to drifting canary weights, diurnal swings and
incidents that hit both arms; a window without events (``m = 0``) contributes
nothing, so a zero-error baseline neither hides nor invents a regression.

Per path group the log-likelihood is accumulated on a fixed grid of
``log psi`` (``GRID``, step ``GRID_STEP``): a list of floats that is the whole
state. Mixing the likelihood ratios over grid points above a null ``psi0``
gives an e-process for ``H0: psi <= psi0`` (the family is exponential in
``log psi``, so alternatives above ``psi0`` have expectation <= 1 for every
``psi <= psi0``); mixing on both sides of each grid point gives a confidence
sequence for ``psi``.

**Quantile confidence sequences** from a histogram: at a bucket bound ``b``
the count of requests ``<= b`` is ``Bin(n, F(b))``; a one-sided mixture of
Bernoulli likelihood ratios rejects ``F(b) <= q`` or ``F(b) >= q``. Because
those counts grow with ``b``, only one test (at the bucket next to the true
quantile) can err, so the interval between the rejected bounds covers the
``q``-quantile with probability ``>= 1 - alpha`` at all times (Howard & Ramdas
2022 build the same from order statistics).

**Across path groups and metric families**: a weighted average of e-values
is an e-value under any dependence (its expectation is the average of
expectations); ``ebh`` names the groups (Wang & Ramdas 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from pipeline.canary import histogram

GRID_STEP: Final = 0.05
GRID_HALF: Final = 70  # grid points each side of psi = 1 (room for psi0 + the largest offset)
GRID_SIZE: Final = 2 * GRID_HALF + 1
CENTRE: Final = GRID_HALF  # index of log psi = 0
#: log psi at each grid point: -3.5 .. 3.5 (psi from 1/33 to 33).
GRID: Final[tuple[float, ...]] = tuple(
    round((i - GRID_HALF) * GRID_STEP, 10) for i in range(GRID_SIZE)
)
#: Mixture components, as offsets in grid steps from the null (0.1 .. 3.0 in log psi),
#: equally weighted. Log-spaced: small regressions need fine steps, large ones are
#: found within a few events whatever the step.
OFFSETS: Final[tuple[int, ...]] = (2, 4, 6, 9, 12, 16, 20, 26, 34, 44, 60)
#: Offsets in logit units for the Bernoulli mixtures (quantiles, rates).
LOGIT_OFFSETS: Final[tuple[float, ...]] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)

LogLikelihood = list[float]


def zero_loglik() -> LogLikelihood:
    return [0.0] * GRID_SIZE


def grid_index(psi: float) -> int:
    """The grid point nearest ``psi`` (a null such as 1.1 is snapped to the grid)."""
    if psi <= 0:
        raise ValueError("a rate ratio must be positive")
    return min(GRID_SIZE - 1, max(0, round(math.log(psi) / GRID_STEP) + GRID_HALF))


def grid_psi(index: int) -> float:
    return math.exp(GRID[index])


def window_loglik(x: int, m: int, n1: int, n0: int) -> LogLikelihood | None:
    """One window's log-likelihood of ``x`` canary events among ``m`` on the grid.

    None when the window carries no information (no events, or an arm without
    requests): the e-process is left unchanged. The binomial coefficient is
    left out: it cancels in every likelihood ratio.
    """
    if m <= 0 or n1 <= 0 or n0 <= 0:
        return None
    if not 0 <= x <= m:
        raise ValueError("canary events must lie between 0 and the window's events")
    share = n1 / (n1 + n0)
    odds = share / (1.0 - share)
    log_odds = math.log(odds)
    out = [0.0] * GRID_SIZE
    y = m - x
    for i, log_psi in enumerate(GRID):
        # log theta = -log(1 + 1/(odds psi)), log(1 - theta) = -log(1 + odds psi)
        t = log_odds + log_psi
        out[i] = -x * _log1p_exp(-t) - y * _log1p_exp(t)
    return out


def _log1p_exp(t: float) -> float:
    """``log(1 + e^t)`` without overflow."""
    return t + math.log1p(math.exp(-t)) if t > 0 else math.log1p(math.exp(t))


def accumulate(total: LogLikelihood, window: Sequence[float] | None) -> None:
    if window is None:
        return
    for i, value in enumerate(window):
        total[i] += value


def log_e_value(loglik: Sequence[float], null: int, *, upper: bool = True) -> float:
    """log of the e-process for ``H0: psi <= grid_psi(null)`` (``upper``) or ``>=``.

    The equally weighted mixture of likelihood ratios at ``null +- OFFSETS``;
    components beyond the grid are dropped (which only makes it smaller).
    """
    base = loglik[null]
    sign = 1 if upper else -1
    terms = [
        loglik[null + sign * offset] - base
        for offset in OFFSETS
        if 0 <= null + sign * offset < GRID_SIZE
    ]
    return log_mean_exp(terms, len(OFFSETS))


def log_mean_exp(terms: Sequence[float], count: int | None = None) -> float:
    """``log(sum(exp(terms)) / count)`` (``count``: ``len(terms)`` by default), stable;
    -inf without terms or when every term is -inf. The one copy for the engine, the
    funnels and the mixtures here."""
    if not terms:
        return -math.inf
    top = max(terms)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(t - top) for t in terms) / (count or len(terms)))


def ratio_interval(loglik: Sequence[float], alpha: float) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the rate ratio psi: a confidence sequence.

    Grid point ``j`` is excluded when the two-sided mixture (half the weight
    above, half below) reaches ``1/alpha``. The bounds are the outermost
    grid points not excluded, widened by one grid step; an end of the grid
    reads as 0 or infinity. The estimate is the grid's maximum-likelihood point
    (the stratified conditional MLE).
    """
    threshold = math.log(1.0 / alpha)
    kept = [j for j in range(GRID_SIZE) if _two_sided(loglik, j) < threshold]
    best = max(range(GRID_SIZE), key=lambda j: (loglik[j], -abs(j - CENTRE)))
    estimate = grid_psi(best)
    if not kept:  # cannot happen for a likelihood with a maximum on the grid
        return estimate, estimate, estimate
    low, high = kept[0], kept[-1]
    lower = 0.0 if low == 0 else grid_psi(low - 1)
    upper = math.inf if high == GRID_SIZE - 1 else grid_psi(high + 1)
    return estimate, lower, upper


def _two_sided(loglik: Sequence[float], j: int) -> float:
    up = log_e_value(loglik, j, upper=True)
    down = log_e_value(loglik, j, upper=False)
    top = max(up, down)
    if top == -math.inf:
        return top
    return top + math.log((math.exp(up - top) + math.exp(down - top)) / 2.0)


# --- Bernoulli mixtures: quantiles and rates --------------------------------------


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _expit(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))


def bernoulli_log_e(successes: float, n: float, p: float, *, above: bool) -> float:
    """log e-value against ``H0: rate <= p`` (``above``: alternatives above p) or ``>= p``.

    ``successes`` of ``n`` iid Bernoulli trials; the mixture over
    ``logit p +- LOGIT_OFFSETS``, equally weighted.
    """
    if n <= 0:
        return 0.0
    if not 0.0 < p < 1.0:
        raise ValueError("p must lie strictly between 0 and 1")
    failures = n - successes
    centre = _logit(p)
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = []
    for offset in LOGIT_OFFSETS:
        alt = _expit(centre + offset if above else centre - offset)
        if not 0.0 < alt < 1.0:
            continue
        terms.append(successes * (math.log(alt) - log_p) + failures * (math.log1p(-alt) - log_q))
    return log_mean_exp(terms, len(LOGIT_OFFSETS))


def rate_bounds(successes: float, n: float, alpha: float) -> tuple[float, float]:
    """Anytime-valid (lower, upper) bounds of a Bernoulli rate, ``alpha`` split over both."""
    if n <= 0:
        return 0.0, 1.0
    threshold = math.log(2.0 / alpha)
    rate = successes / n

    def upper_rejected(p: float) -> bool:  # H0: rate >= p rejected (data too low)
        return bernoulli_log_e(successes, n, p, above=False) >= threshold

    def lower_rejected(p: float) -> bool:  # H0: rate <= p rejected (data too high)
        return bernoulli_log_e(successes, n, p, above=True) >= threshold

    upper = 1.0
    if rate < 1.0 and upper_rejected(1.0 - 1e-12):
        upper = _bisect(max(rate, 1e-12), 1.0 - 1e-12, upper_rejected, rejected_high=True)
    lower = 0.0
    if rate > 0.0 and lower_rejected(1e-12):
        lower = _bisect(1e-12, min(rate, 1.0 - 1e-12), lower_rejected, rejected_high=False)
    return lower, upper


def _bisect(
    low: float, high: float, rejected: Callable[[float], bool], *, rejected_high: bool
) -> float:
    """The boundary between accepted and rejected p (on the logit scale, 50 steps)."""
    a, b = _logit(low), _logit(high)
    for _ in range(50):
        mid = (a + b) / 2.0
        if rejected(_expit(mid)) == rejected_high:
            b = mid
        else:
            a = mid
    return _expit(b if rejected_high else a)


def quantile_bounds(
    counts: Mapping[int, float], q: float, alpha: float
) -> tuple[float | None, float | None]:
    """Anytime-valid (lower, upper) bounds in ms of the ``q``-quantile of a histogram.

    ``alpha`` is split over both sides. Bounds are bucket bounds; None when
    the data cannot bound that side yet (lower: 0 ms; upper: unbounded).
    """
    n = float(sum(counts.values()))
    if n <= 0:
        return None, None
    threshold = math.log(2.0 / alpha)
    lower: float | None = None
    upper: float | None = None
    below = 0.0
    for index in sorted(counts):
        # F(bound) >= q rejected: fewer at or below bound than q allows -> Q > bound. The
        # bound below an occupied bucket counts as much as the last occupied one's.
        if index > 0 and below < q * n and bernoulli_log_e(below, n, q, above=False) >= threshold:
            lower = histogram.BOUNDS_MS[index - 1]
        below += counts[index]
        if index >= histogram.OVERFLOW:
            break
        bound = histogram.BOUNDS_MS[index]
        if below < q * n and bernoulli_log_e(below, n, q, above=False) >= threshold:
            lower = bound
        # F(bound) <= q rejected: more at or below bound -> Q <= bound.
        if (
            upper is None
            and below > q * n
            and bernoulli_log_e(below, n, q, above=True) >= threshold
        ):
            upper = bound
    return lower, upper


# --- combining ---------------------------------------------------------------------


def ebh(e_values: Mapping[str, float], alpha: float) -> list[str]:
    """e-BH: the names whose e-values are rejected at level alpha (Wang & Ramdas 2022).

    With ``K`` hypotheses sorted by e-value, reject the ``k*`` largest for the
    largest ``k*`` with ``e_(k*) >= K / (alpha k*)``. Valid under any dependence.
    """
    ordered = sorted(e_values.items(), key=lambda item: (-item[1], item[0]))
    count = len(ordered)
    rejected = 0
    for k, (_, value) in enumerate(ordered, start=1):
        if value >= count / (alpha * k):
            rejected = k
    return [name for name, _ in ordered[:rejected]]


def clopper_pearson_upper(successes: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper end of the two-sided Clopper-Pearson interval (``(1-confidence)/2``)."""
    if n <= 0:
        return 1.0
    if successes >= n:
        return 1.0
    tail = (1.0 - confidence) / 2.0
    low, high = successes / n, 1.0
    for _ in range(100):
        mid = (low + high) / 2.0
        if binomial_cdf(successes, n, mid) > tail:
            low = mid
        else:
            high = mid
    return high


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Bin(n, p) <= k)`` by summing the pmf in log space."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lg = math.lgamma
    terms = [
        lg(n + 1) - lg(i + 1) - lg(n - i + 1) + i * log_p + (n - i) * log_q for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))
