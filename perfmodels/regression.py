"""Time as a function of batch size, fitted on the history of one stage on one arch.

Two shapes, as StarPU's regression models have them:

- ``"linear"``: ``t(N) = a*N + b`` -- a fixed launch cost plus a per-row cost; needs
  two distinct batch sizes;
- ``"power"``: ``t(N) = a*N**b + c`` -- per-row cost that shrinks (``b < 1``, better
  vectorisation at larger batches) or grows (``b > 1``, caches overflow); needs three.

Both are fitted in *relative* terms -- residuals divided by the measured time, i.e.
weights ``1/y`` -- so batch 1 at 1 ms counts as much as batch 64 at 50 ms: the batch
chooser cares about relative error at every size.  The power law is fitted without
scipy: for each exponent ``b`` on a grid over [0.2, 2.5], ``a`` and ``c`` are a linear
least-squares problem; the best grid ``b`` is then refined by golden-section search.
Fits with ``a <= 0`` are rejected (time must grow with ``N``).

Choosing: the power law has one parameter more, so it must earn it.  It wins only when
its relative RMS error is below 90% of the linear fit's, errors under 1e-9 counting as
1e-9 (so two exact fits of linear data tie, and the tie goes to linear).

Perf models don't guess: :meth:`BatchFit.predict` is NaN outside the observed range.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchFit", "fit_batch_model"]

_EXPONENT_LO, _EXPONENT_HI, _EXPONENT_STEP = 0.2, 2.5, 0.05  # golden-section refines between steps
_GOLDEN_ITERATIONS = 30  # brackets one grid step: 0.1 * 0.618**30 < 1e-7
_POWER_MUST_BEAT = 0.9  # power's rel_rmse must be below this share of linear's
_RMSE_FLOOR = 1e-9  # relative errors below this are float noise, not a better fit

_Array = np.ndarray


@dataclass(frozen=True)
class BatchFit:
    """A fitted time model over batch sizes.

    Fields:
        kind: ``"linear"`` (params ``a, b``: ``a*N + b``) or ``"power"``
            (params ``a, b, c``: ``a*N**b + c``); seconds.
        params: the coefficients, in that order.
        n_min, n_max: smallest and largest batch size observed; the fit answers only there.
        rel_rmse: root mean square of ``(fit - y) / y`` over the points it was fitted on.
    """

    kind: str
    params: tuple[float, ...]
    n_min: int
    n_max: int
    rel_rmse: float

    def __post_init__(self) -> None:
        arity = {"linear": 2, "power": 3}.get(self.kind)
        if arity is None or len(self.params) != arity:
            raise ValueError(f"bad BatchFit: kind {self.kind!r} with params {self.params!r}")

    def predict(self, batch: int) -> float:
        """Predicted seconds at ``batch``; NaN outside ``[n_min, n_max]`` (no extrapolation)."""
        if not self.n_min <= batch <= self.n_max:
            return math.nan
        return float(_evaluate(self.kind, self.params, np.asarray([float(batch)]))[0])


def _evaluate(kind: str, params: Sequence[float], n: _Array) -> _Array:
    if kind == "linear":
        a, b = params
        return a * n + b
    a, b, c = params
    return a * n**b + c


def fit_batch_model(points: Sequence[tuple[int, float]]) -> BatchFit | None:
    """Fit ``(batch, seconds)`` points; None with fewer than two distinct batch sizes.

    Duplicate batch sizes are welcome: each point is its own relative residual, so a
    size measured three times weighs three times.  Batch sizes must be integers >= 1
    and times finite and > 0 (relative errors divide by them); else ValueError.
    """
    n, y = _validated(points)
    distinct = np.unique(n).size
    if distinct < 2:
        return None
    linear = _fit_linear(n, y)
    power = _fit_power(n, y) if distinct >= 3 else None
    if power is not None and _floor(power.rel_rmse) < _POWER_MUST_BEAT * _floor(linear.rel_rmse):
        return power
    return linear


def _validated(points: Sequence[tuple[int, float]]) -> tuple[_Array, _Array]:
    batches, seconds = [], []
    for point in points:
        batch, duration_s = point[0], point[1]
        if isinstance(batch, bool) or operator.index(batch) < 1:
            raise ValueError(f"batch sizes must be integers >= 1, got {batch!r}")
        if not math.isfinite(duration_s) or duration_s <= 0:
            raise ValueError(f"times must be finite and > 0 seconds, got {duration_s!r}")
        batches.append(float(operator.index(batch)))
        seconds.append(float(duration_s))
    return np.asarray(batches), np.asarray(seconds)


def _floor(rel_rmse: float) -> float:
    return max(rel_rmse, _RMSE_FLOOR)


def _rel_rmse(kind: str, params: Sequence[float], n: _Array, y: _Array) -> float:
    return float(np.sqrt(np.mean(((_evaluate(kind, params, n) - y) / y) ** 2)))


def _weighted_lstsq(columns: list[_Array], y: _Array) -> _Array:
    """Least squares of ``sum_j p_j * col_j ~ y`` in relative terms: rows divided by ``y``."""
    design = np.stack([col / y for col in columns], axis=1)
    solution, *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)
    return np.asarray(solution)


def _fit_linear(n: _Array, y: _Array) -> BatchFit:
    a, b = (float(v) for v in _weighted_lstsq([n, np.ones_like(n)], y))
    return _make("linear", (a, b), n, y)


def _make(kind: str, params: tuple[float, ...], n: _Array, y: _Array) -> BatchFit:
    return BatchFit(kind, params, int(n.min()), int(n.max()), _rel_rmse(kind, params, n, y))


def _power_at(exponent: float, n: _Array, y: _Array) -> tuple[float, tuple[float, ...]]:
    """Best ``a, c`` for a fixed exponent, and its relative RMSE (inf when ``a <= 0``): the
    normal equations of :func:`_power_grid` in plain floats, a handful of points being far
    cheaper so than through numpy (the golden section calls this ~30 times a fit)."""
    us = [float(b) ** exponent / float(t) for b, t in zip(n, y)]
    vs = [1.0 / float(t) for t in y]
    suu = sum(u * u for u in us)
    suv = sum(u * v for u, v in zip(us, vs))
    svv = sum(v * v for v in vs)
    su, sv = sum(us), sum(vs)
    det = suu * svv - suv * suv
    if not abs(det) > 1e-10 * suu * svv:  # near singular: lstsq
        errors, a_, c_ = _power_grid(np.asarray([exponent]), n, y)
        return float(errors[0]), (float(a_[0]), exponent, float(c_[0]))
    a = (su * svv - sv * suv) / det
    c = (suu * sv - suv * su) / det
    params = (a, exponent, c)
    if not a > 0:
        return math.inf, params
    return math.sqrt(sum((a * u + c * v - 1.0) ** 2 for u, v in zip(us, vs)) / len(us)), params


def _power_grid(exponents: _Array, n: _Array, y: _Array) -> tuple[_Array, _Array, _Array]:
    """:func:`_power_at` for many exponents at once: relative RMSE, ``a`` and ``c`` of each.

    The two-column relative least squares is solved by its 2x2 normal equations, all exponents
    in one pass: the batch chooser refits under load on a worker's thread, and one lstsq call
    per exponent (~80 of them) held the GIL for ~2 ms a fit.  Exponents whose normal equations
    are near singular are solved by lstsq, as before."""
    u = n[None, :] ** exponents[:, None] / y  # rows of the design, divided by y: a*u + c*v ~ 1
    v = 1.0 / y
    suu, suv, su = (u * u).sum(axis=1), (u * v).sum(axis=1), u.sum(axis=1)
    svv, sv = float((v * v).sum()), float(v.sum())
    det = suu * svv - suv * suv
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (su * svv - sv * suv) / det
        c = (suu * sv - suv * su) / det
    for row in np.flatnonzero(~(np.abs(det) > 1e-10 * suu * svv)):  # near singular: lstsq
        a[row], c[row] = _weighted_lstsq([n ** exponents[row], np.ones_like(n)], y)
    residuals = a[:, None] * u + c[:, None] * v - 1.0
    errors = np.sqrt(np.mean(residuals**2, axis=1))
    errors[~(a > 0)] = math.inf
    return errors, a, c


def _fit_power(n: _Array, y: _Array) -> BatchFit | None:
    """Grid over the exponent, then golden-section refinement around the best grid point."""
    steps = round((_EXPONENT_HI - _EXPONENT_LO) / _EXPONENT_STEP)
    grid = np.linspace(_EXPONENT_LO, _EXPONENT_HI, steps + 1)
    errors = _power_grid(grid, n, y)[0]
    best = int(np.argmin(errors))
    if not math.isfinite(errors[best]):
        return None
    lo = float(grid[max(best - 1, 0)])
    hi = float(grid[min(best + 1, len(grid) - 1)])
    exponent = _golden_section(lambda b: _power_at(b, n, y)[0], lo, hi)
    error, params = _power_at(exponent, n, y)
    if not error <= errors[best]:  # the refinement never makes it worse
        params = _power_at(float(grid[best]), n, y)[1]
    return _make("power", params, n, y)


def _golden_section(cost: Callable[[float], float], lo: float, hi: float) -> float:
    """Minimiser of a unimodal ``cost`` on ``[lo, hi]``."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f1, f2 = cost(x1), cost(x2)
    for _ in range(_GOLDEN_ITERATIONS):
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - ratio * (hi - lo)
            f1 = cost(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + ratio * (hi - lo)
            f2 = cost(x2)
    return x1 if f1 <= f2 else x2

