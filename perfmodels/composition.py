"""A part's time from its nodes' profiled times: the naive sum, and a learned correction.

Summing node times is wrong both ways: ONNX Runtime fuses nodes and keeps data
in cache inside a session, and every part pays a session call and the copies
of its inputs and outputs.  Following the split-inference latency model, the
correction is linear in what a part is made of, per processor kind::

    t_part = alpha * S + c0 * (number of nodes) + c1 * (1 - share)

where S is the part's node times summed and scaled by (whole-model time /
all node times) (:func:`scaled_node_sum`; the whole-model time from its history
when there is one, else from the same profile), and ``share`` is
the part's fraction of those node times (:func:`node_share`, so S = share ×
whole-model time).  The scaling cancels the profiler's own cost per kernel and
the machine's load drifting between profiles.  The whole model's run already
paid one session call, and the scaling spread that call over its nodes; a part
pays a whole call of its own, so it is owed the rest: ``c1 * (1 - share)``.
Without that term, a fixed call cost ``c1`` fitted on microsecond parts (where
the call is most of the time, and already half inside S) was counted twice, and
the fit paid for it by lowering ``alpha`` on every model (0.8 instead of 1.0 on
the zoo at one thread).  A part that is the whole model is predicted as its
measured run (alpha = 1, c0 = 0).

Fitted on measured parts by robust least squares in relative terms (every part
counts the same whatever its size, and parts the model cannot explain count less:
:func:`fit_composition`), with every coefficient kept >= 0 (an exhaustive
active-set search over the three, which is exact for so few parameters).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from perfmodels.costs import NodeCosts

ROBUST_SCALE = 0.1  # relative residual at which a part's weight halves
ROBUST_ITERATIONS = 20
FORMAT = "hetsched.composition/2"  # /1 had c1 without (1 - share)


def naive_sum(node_costs_s: Mapping[str, float], nodes: Iterable[str]) -> float:
    """Sum of the profiled seconds of ``nodes`` (0 for nodes the profile does not name)."""
    return float(sum(node_costs_s.get(name, 0.0) for name in nodes))


def node_share(costs: NodeCosts, nodes: Iterable[str]) -> float:
    """The part's fraction of the model's profiled node time (0 when the profile has none)."""
    total = costs.total_s()
    return naive_sum(costs.seconds, nodes) / total if total > 0 else 0.0


def scaled_node_sum(costs: NodeCosts, nodes: Iterable[str], whole_s: float | None = None) -> float:
    """The part's node times, scaled so that all of the model's nodes add up to its measured run.

    That run is ``whole_s`` when given -- the whole model's time as its history says, which
    many runs measured lately -- else the profile's own whole-model run.  The profile fixes
    the part's *share*; its absolute times were taken once, and on a shared machine a slow
    spell during profiling (one core stolen for a second) made every part of a model 1.5x
    off at once, a common error no correction fitted across models can undo.
    """
    total = costs.total_s()
    whole = whole_s if whole_s is not None and math.isfinite(whole_s) and whole_s > 0 else costs.whole_model_s
    scale = whole / total if total > 0 and whole > 0 else 1.0
    return naive_sum(costs.seconds, nodes) * scale


@dataclass(frozen=True)
class CompositionSample:
    """One measured part: its :func:`scaled_node_sum`, its node count, its measured seconds and
    its :func:`node_share`."""

    node_sum_s: float
    n_nodes: int
    measured_s: float
    share: float


@dataclass(frozen=True)
class CompositionModel:
    """``alpha * node_sum + c0_s * n_nodes + c1_s * (1 - share)`` for one processor kind."""

    arch: str
    alpha: float
    c0_s: float
    c1_s: float
    samples: int
    rel_rmse: float  # relative RMS error on the parts it was fitted on

    def predict(self, node_sum_s: float, n_nodes: int, share: float) -> float:
        return self.alpha * node_sum_s + self.c0_s * n_nodes + self.c1_s * (1.0 - share)

    def to_dict(self) -> dict[str, object]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> CompositionModel:
        if raw.get("format") != FORMAT:
            raise ValueError(f"composition model format {raw.get('format')!r} is not {FORMAT!r}")
        fields = {k: v for k, v in raw.items() if k != "format"}
        return cls(**fields)  # type: ignore[arg-type]


def fit_composition(arch: str, samples: Sequence[CompositionSample]) -> CompositionModel:
    """Robust least-squares fit with non-negative coefficients; needs at least 2 samples.

    Parts whose node profile is noise -- microsecond parts, where ONNX Runtime's profiler
    times kernels of a few microseconds and the measured part is mostly its session call
    -- miss any fit by 2-4x, and in plain least squares they pulled ``alpha`` to 0.7 on
    the zoo, where the millisecond parts of every real model want 1.0.  So, as outliers
    must not poison the history, they must not poison this fit: iteratively reweighted
    least squares with Cauchy weights ``1 / (1 + (r / ROBUST_SCALE)**2)`` on each part's
    relative residual ``r``.  ``rel_rmse`` is the plain (unweighted) relative RMS error.
    """
    usable = [s for s in samples if s.measured_s > 0 and math.isfinite(s.measured_s)]
    if len(usable) < 2:
        raise ValueError(f"{arch}: a composition fit needs >= 2 measured parts, got {len(usable)}")
    y = np.array([s.measured_s for s in usable])
    columns = np.array([[s.node_sum_s, s.n_nodes, 1.0 - s.share] for s in usable]) / y[:, None]  # relative
    weights = np.ones(len(usable))
    coef = _nonnegative_lstsq(columns, weights)
    for _ in range(ROBUST_ITERATIONS):
        residual = columns @ coef - 1.0
        weights = 1.0 / (1.0 + (residual / ROBUST_SCALE) ** 2)
        coef = _nonnegative_lstsq(columns, weights)
    error = float(np.sqrt(np.mean((columns @ coef - 1.0) ** 2)))
    return CompositionModel(arch, float(coef[0]), float(coef[1]), float(coef[2]), len(usable), error)


def _nonnegative_lstsq(columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``argmin sum(w * (columns @ coef - 1)**2)`` over ``coef >= 0``: every active set tried."""
    root = np.sqrt(weights)
    design, target = columns * root[:, None], root
    best: tuple[float, np.ndarray] | None = None
    for size in (3, 2, 1):
        for active in itertools.combinations(range(3), size):
            solution = np.linalg.lstsq(design[:, active], target, rcond=None)[0]
            if np.any(solution < 0):
                continue
            coef = np.zeros(3)
            coef[list(active)] = solution
            error = float(np.sum((design @ coef - target) ** 2))
            if best is None or error < best[0] - 1e-18:
                best = (error, coef)
    assert best is not None  # a single column always has a non-negative solution for y > 0
    return best[1]
