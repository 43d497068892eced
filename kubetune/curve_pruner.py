"""Learning-curve extrapolation (Domhan, Springenberg and Hutter, IJCAI 2015) as an Optuna pruner, kept small.

A trial's partial validation curve is fitted by a few increasing, saturating curve families by least
squares. Each fitted family predicts the value at the maximum resource as a normal distribution: its
extrapolation, with the variance of the fitted parameters carried to it and the residual noise added
(the final value is one noisy measurement too). Each member is weighted by the precision of its
prediction (one over its variance), so a family that fits the curve closely and pins its end down counts
more. The trial is stopped once the mixture's probability of beating the incumbent (the best final value
of the completed trials) falls below ``threshold``.

Domhan et al. sample the ensemble by MCMC; a least-squares fit with its covariance is the cheap version of
the same idea, fast enough to run after every epoch of every trial. It errs towards keeping: a curve that
no family fits, or that only one family fits, is never pruned.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.stats import norm

__all__ = ["CurvePruner", "Member", "extrapolate", "probability_to_beat"]

# The noise a curve is granted at least, relative to the size of its values: a flat or perfectly fitted
# curve would otherwise claim a certainty that a measured accuracy never has.
NOISE_FLOOR = 1e-3
MIN_MEMBERS = 2  # fewer fitted families than this decide nothing
# A family must explain this share of the curve's variance (adjusted R squared): a fit to noise, or to a
# flat line, says nothing about where the curve goes, so it never prunes.
MIN_EXPLAINED = 0.7
ASYMPTOTE_REACH = 20.0  # an asymptote may lie this many times the observed range beyond the values


def _pow3(x, c, a, alpha):
    return c - a * x ** (-alpha)


def _exp3(x, c, a, b):
    return c - a * np.exp(-b * x)


def _ilog2(x, c, a):
    return c - a / np.log(x + 1.0)


def _mmf(x, c, a, k, delta):
    return c - a / (1.0 + (k * x) ** delta)


@dataclass(frozen=True)
class _Family:
    name: str
    function: Callable[..., np.ndarray]
    start: tuple[float, ...]  # in units of the curve scaled to [0, 1], asymptote first
    low: tuple[float, ...]  # every family rises with the step within these bounds
    high: tuple[float, ...]


# The asymptote's bounds are set per curve (ASYMPTOTE_REACH); the other parameters keep each family rising.
FAMILIES = (
    _Family("pow3", _pow3, (1.0, 1.0, 0.5), (0.0, 0.0, 0.01), (0.0, 100.0, 5.0)),
    _Family("exp3", _exp3, (1.0, 1.0, 0.5), (0.0, 0.0, 1e-3), (0.0, 100.0, 5.0)),
    _Family("ilog2", _ilog2, (1.0, 1.0), (0.0, 0.0), (0.0, 100.0)),
    _Family("mmf", _mmf, (1.0, 1.0, 0.5, 1.0), (0.0, 0.0, 1e-3, 0.1), (0.0, 100.0, 10.0, 5.0)),
)


@dataclass(frozen=True)
class Member:
    """One fitted family's prediction of the value at the maximum resource, and its weight in the mixture."""

    name: str
    mean: float
    std: float
    weight: float


def extrapolate(steps: Sequence[float], values: Sequence[float], at: float) -> list[Member]:
    """The families that fit the increasing curve ``values`` (at ``steps``), each predicting its value at ``at``.

    Non-finite values are dropped. A family needs two points more than its parameters (two degrees of
    freedom for its noise); one whose fit fails, explains too little of the curve (MIN_EXPLAINED) or
    predicts no finite value is left out. Empty when nothing fits.
    """
    x = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    if x.size == 0:
        return []
    floor = NOISE_FLOOR * max(float(np.abs(y).max()), 1e-12)
    # Fitting in units where the curve spans [0, 1] keeps one set of starts and bounds good for any metric.
    low, scale = float(y.min()), max(float(np.ptp(y)), floor)
    z = (y - low) / scale
    fitted = [_fit(family, x, z, at, floor / scale) for family in FAMILIES if x.size >= len(family.start) + 2]
    found = [f for f in fitted if f is not None]
    if not found:
        return []
    precision = [1.0 / std**2 for _, _, std in found]
    total = sum(precision)
    return [
        Member(name, low + scale * mean, scale * std, weight / total)
        for (name, mean, std), weight in zip(found, precision, strict=True)
    ]


def _fit(family: _Family, x: np.ndarray, z: np.ndarray, at: float, floor: float):
    """(name, mean, std) of ``family`` fitted to ``z``, in the scaled units; None when the fit fails."""
    p = len(family.start)
    bounds = ([-ASYMPTOTE_REACH, *family.low[1:]], [1.0 + ASYMPTOTE_REACH, *family.high[1:]])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow inside a rejected step
            theta, cov = curve_fit(family.function, x, z, p0=family.start, bounds=bounds, maxfev=2000)
    except (RuntimeError, ValueError, OptimizeWarning, FloatingPointError):
        return None
    residual = z - family.function(x, *theta)
    rss = max(float(residual @ residual), x.size * floor**2)
    spread = max(float(np.sum((z - z.mean()) ** 2)), x.size * floor**2)
    if 1.0 - (rss / (x.size - p)) / (spread / (x.size - 1)) < MIN_EXPLAINED:
        return None
    mean = float(family.function(np.float64(at), *theta))
    gradient = np.array([_partial(family.function, at, theta, j) for j in range(p)])
    variance = float(gradient @ cov @ gradient) + rss / (x.size - p)
    if not (math.isfinite(mean) and math.isfinite(variance) and variance >= 0):
        return None
    return family.name, mean, math.sqrt(variance)


def _partial(function: Callable[..., np.ndarray], at: float, theta: np.ndarray, j: int) -> float:
    step = 1e-6 * max(1.0, abs(float(theta[j])))
    up, down = theta.copy(), theta.copy()
    up[j] += step
    down[j] -= step
    return float(function(np.float64(at), *up) - function(np.float64(at), *down)) / (2 * step)


def probability_to_beat(steps: Sequence[float], values: Sequence[float], *, incumbent: float, at: float) -> float:
    """The probability that the increasing curve ``values`` ends above ``incumbent`` at step ``at``.

    1.0 (keep the trial) unless at least MIN_MEMBERS families fit it.
    """
    members = extrapolate(steps, values, at)
    if len(members) < MIN_MEMBERS:
        return 1.0
    return sum(m.weight * float(norm.sf(incumbent, loc=m.mean, scale=m.std)) for m in members)


class CurvePruner(BasePruner):
    """Prune a trial whose extrapolated learning curve beats the incumbent with probability below ``threshold``.

    Called after each report (Optuna's ``should_prune``). Nothing is pruned before ``n_startup_trials``
    trials completed, before step ``min_resource``, or at or past ``max_resource``; a trial whose best value
    so far already beats the incumbent is kept. Both directions: a minimised curve is fitted negated.

    Example:
        >>> pruner = CurvePruner(max_resource=10, threshold=0.05)
        >>> study = optuna.create_study(direction="maximize", pruner=pruner)
    """

    def __init__(
        self, *, max_resource: int, threshold: float = 0.05, min_resource: int = 1, n_startup_trials: int = 5
    ) -> None:
        if max_resource < 1:
            raise ValueError(f"max_resource must be at least 1 but got {max_resource}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1) but got {threshold}")
        if min_resource < 1:
            raise ValueError(f"min_resource must be at least 1 but got {min_resource}")
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be at least 0 but got {n_startup_trials}")
        self._max_resource = max_resource
        self._threshold = threshold
        self._min_resource = min_resource
        self._n_startup_trials = n_startup_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self._min_resource or step >= self._max_resource:
            return False
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        finals = [t.value for t in complete if t.value is not None and math.isfinite(t.value)]
        if len(finals) < max(1, self._n_startup_trials):
            return False
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        steps = sorted(s for s in trial.intermediate_values if s <= self._max_resource)
        values = [sign * trial.intermediate_values[s] for s in steps]
        incumbent = max(sign * v for v in finals)
        finite = [v for v in values if math.isfinite(v)]
        if not finite or max(finite) > incumbent:
            return False
        chance = probability_to_beat(steps, values, incumbent=incumbent, at=self._max_resource)
        return chance < self._threshold
