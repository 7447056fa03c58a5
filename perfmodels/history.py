"""History perf models, StarPU style: the measured duration of each (stage, arch, footprint).

A *stage* is one part model (keyed by the hash of its bytes, so a re-partitioned model
never inherits stale timings), an *arch* is the processor kind it ran on (``"cpu:2t"``,
``"cuda:NVIDIA H100"``) and a *footprint* is the text of its input shapes, batch
included.  Each key holds running statistics (Welford: counts, mean and spread of two
models -- two processes, two runs -- combine exactly, Chan et al.) and a window of its
recent samples (merged as the newer model's samples after the older's).

Perf models don't guess: below ``min_samples`` samples :meth:`HistoryModel.predict`
returns NaN, which a policy reads as "run it there to calibrate".

What it predicts is the *median of the last* :data:`WINDOW` *samples*, not the mean.
Part times are skewed: on the 2-core VM a 2-thread part's mean sat 5-11% above its
median (the other tenant's bursts), so a mean predicts no run that actually happens, and
a burst moves it for hundreds of runs.  The window's median is the typical run of
lately: robust to bursts, and it follows a lasting change within ``WINDOW / 2`` runs.
Keeping it sorted as samples come makes a record O(WINDOW) moves in C, a prediction O(1).
The Welford statistics stay for what needs them (spread, counts, exact merges).

Outliers must not poison a model.  Once an entry holds ``min_samples`` samples, a
sample further than ``max(5 * std, 0.5 * mean)`` *above* the mean is rejected and only
counted (slow spikes come from preemption, GC, page faults; a faster sample is genuine,
so the test is one-sided).  A lasting change -- the machine became 2x slower -- must
not be rejected forever, so when the last ``min_samples`` samples in a row were all
rejected the entry is *reset* to exactly those samples and counts one more ``resets``.

Standard library only: perf models never import ONNX Runtime (nor numpy, here).
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote

__all__ = [
    "HistoryKey",
    "HistoryModel",
    "HistorySnapshot",
    "RunningStats",
    "footprint",
    "stage_id",
]

_log = logging.getLogger(__name__)

# A sample is an outlier when it exceeds the mean by more than max(SIGMAS * std, SHARE * mean).
_OUTLIER_SIGMAS = 5.0
_OUTLIER_MEAN_SHARE = 0.5
# Recent samples whose median is the prediction: long enough that a noisy machine's bursts
# (runs here come in regimes of ~10 slow or fast ones) do not move it, short enough to follow
# a lasting change within 32 runs; odd, so the median is one sample.
WINDOW = 63


@dataclass
class RunningStats:
    """Running count, mean and squared deviations of one entry's samples (Welford).

    Fields:
        count: samples folded into ``mean`` / ``m2``.
        mean: their mean (0.0 when empty).
        m2: sum of squared deviations from ``mean``; ``m2 / (count - 1)`` is the sample variance.
        rejected: samples seen but not folded in (outliers); lowered again when a reset
            folds the most recent ones in after all.
        resets: how often the entry was reset to its recent outliers (a lasting shift).
        recent_outliers: the outliers rejected in a row since the last accepted sample;
            once ``min_samples`` of them accumulate they become the entry.
        window: the last :data:`WINDOW` samples, oldest first, outliers included (the
            median needs no rejection, and a lasting change shows there first).
        median: the median of ``window`` (NaN when empty), kept current on every change
            because the scheduler reads it for every candidate worker of every task.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    rejected: int = 0
    resets: int = 0
    recent_outliers: list[float] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    median: float = field(default=math.nan, init=False, compare=False)
    _ordered: list[float] = field(default_factory=list, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._ordered = sorted(self.window)
        self.median = _median(self._ordered)

    def add(self, x: float, *, min_samples: int = 5, reject_outliers: bool = True) -> bool:
        """Fold ``x`` in; False when it was rejected as an outlier (see the module docstring).

        ``min_samples`` is the entry's trust threshold: outliers are only judged once
        ``count >= min_samples``, and that many rejections in a row reset the entry.
        ``reject_outliers=False`` folds every sample in (plain Welford).
        """
        value = float(x)
        if not math.isfinite(value):
            raise ValueError(f"sample must be a finite number, got {x!r}")
        self._remember(value)
        count, mean = self.count, self.mean
        if reject_outliers and count >= max(min_samples, 1):
            # the outlier test, inline: every executed task records here
            spread = _OUTLIER_SIGMAS * math.sqrt(max(self.m2 / (count - 1), 0.0)) if count >= 2 else 0.0
            if value - mean > max(spread, _OUTLIER_MEAN_SHARE * abs(mean)):
                self.rejected += 1
                self.recent_outliers.append(value)
                if len(self.recent_outliers) < max(min_samples, 1):
                    return False
                self._reset_to_recent_outliers()
                return True
        if self.recent_outliers:
            self.recent_outliers.clear()
        self.count, self.mean, self.m2 = _welford(count, mean, self.m2, value)
        return True

    def _remember(self, value: float) -> None:
        """Append ``value`` to the window (dropping its oldest past WINDOW) and refresh the median."""
        window, ordered = self.window, self._ordered
        window.append(value)
        bisect.insort(ordered, value)
        if len(window) > WINDOW:
            del ordered[bisect.bisect_left(ordered, window.pop(0))]
        self.median = _median(ordered)

    def _reset_to_recent_outliers(self) -> None:
        """The recent outliers were a lasting shift, not spikes: they become the entry."""
        samples = self.recent_outliers
        count, mean, m2 = 0, 0.0, 0.0  # folded apart, then set at once: predict() reads without a lock
        for value in samples:
            count, mean, m2 = _welford(count, mean, m2, value)
        self.count, self.mean, self.m2 = count, mean, m2
        self.rejected -= len(samples)
        self.resets += 1
        self.recent_outliers = []

    def merge(self, other: RunningStats) -> None:
        """Combine ``other``'s samples into these, exactly (Chan, Golub, LeVeque 1979).

        Counts add; order matters for ``recent_outliers`` and the window: ``other`` is
        taken as the newer samples, so an accepted sample there ends this entry's run of
        outliers, and the window keeps ``other``'s samples first.
        """
        for value in list(other.window):
            self._remember(value)
        if other.count and not self.count:  # copy: the formula below would round the mean
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            self.recent_outliers = list(other.recent_outliers)
        elif other.count:
            total = self.count + other.count
            delta = other.mean - self.mean
            self.m2 += other.m2 + delta * delta * self.count * other.count / total
            self.mean += delta * other.count / total
            self.count = total
            self.recent_outliers = list(other.recent_outliers)
        else:
            self.recent_outliers.extend(other.recent_outliers)
        self.rejected += other.rejected
        self.resets += other.resets

    @property
    def variance(self) -> float:
        """Sample variance (``ddof=1``), NaN below two samples."""
        return self.m2 / (self.count - 1) if self.count >= 2 else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation, NaN below two samples."""
        return math.sqrt(max(self.variance, 0.0)) if self.count >= 2 else math.nan

    @property
    def relative_std(self) -> float:
        """``std / mean``: how noisy the entry is, unit-free; NaN when undefined."""
        return self.std / self.mean if self.count >= 2 and self.mean != 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields; floats round-trip exactly through ``json``."""
        return {
            "count": self.count,
            "mean": self.mean,
            "m2": self.m2,
            "rejected": self.rejected,
            "resets": self.resets,
            "recent_outliers": list(self.recent_outliers),
            "window": list(self.window),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunningStats:
        """Inverse of :meth:`to_dict`; ValueError/TypeError on missing or ill-typed fields."""
        if not isinstance(data, Mapping):
            raise TypeError(f"running stats must be a mapping, got {type(data).__name__}")
        outliers, window = data.get("recent_outliers", []), data.get("window")
        if not isinstance(outliers, list):
            raise TypeError(f"recent_outliers must be a list, got {outliers!r}")
        if not isinstance(window, list):
            raise TypeError(f"window must be a list, got {window!r}")
        count = _count(data.get("count"), "count")
        if len(window) < min(count, WINDOW):  # every folded sample passed through the window
            raise ValueError(f"window holds {len(window)} samples, fewer than the {min(count, WINDOW)} "
                             f"its count of {count} implies")
        return cls(
            count=count,
            mean=_finite(data.get("mean"), "mean"),
            m2=_finite(data.get("m2"), "m2", minimum=0.0),
            rejected=_count(data.get("rejected"), "rejected"),
            resets=_count(data.get("resets", 0), "resets"),
            recent_outliers=[_finite(v, "recent_outliers[]") for v in outliers],
            window=[_finite(v, "window[]") for v in window[-WINDOW:]],  # a larger WINDOW wrote it
        )


def _welford(count: int, mean: float, m2: float, value: float) -> tuple[int, float, float]:
    """Count, mean and squared deviations with ``value`` folded in (Welford)."""
    count += 1
    delta = value - mean
    mean += delta / count
    return count, mean, m2 + delta * (value - mean)


def _median(ordered: list[float]) -> float:
    """The median of a sorted list, NaN when empty."""
    size = len(ordered)
    middle = size >> 1
    if size & 1:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2 if size else math.nan


def _count(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _finite(value: object, name: str, minimum: float = -math.inf) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be finite and >= {minimum}, got {value!r}")
    return float(value)


def footprint(shapes: Mapping[str, Sequence[int]]) -> str:
    """Stable text of concrete input shapes, batch included: ``"input=1x3x224x224"``.

    Inputs are sorted by name and joined by ``","``; names are percent-escaped
    (``=``, ``,``, ``%`` and the like) so the text parses back unambiguously
    (:meth:`HistoryModel.batch_points` relies on that).  A scalar input is ``"name="``.
    """
    parts = []
    for name in sorted(shapes):
        dims = []
        for dim in shapes[name]:
            if isinstance(dim, bool) or not hasattr(dim, "__index__") or dim.__index__() < 0:
                raise ValueError(f"input {name!r}: footprints need concrete dims >= 0, got {dim!r}")
            dims.append(str(dim.__index__()))
        parts.append(f"{quote(name, safe=':/')}={'x'.join(dims)}")
    return ",".join(parts)


def _footprint_batch(text: str) -> int | None:
    """The batch size of a footprint: the first dim shared by every input, else None."""
    batches = set()
    for part in text.split(","):
        _, eq, dims = part.rpartition("=")
        first = dims.split("x", 1)[0]
        if not eq or not first.isdecimal():
            return None
        batches.add(int(first))
    if len(batches) != 1:
        return None
    batch = batches.pop()
    return batch if batch >= 1 else None


def stage_id(model_bytes: bytes) -> str:
    """Identity of a part model: sha256 of its bytes, first 16 hex digits.

    Keying history by content means a re-partitioned or re-exported model starts
    calibrating afresh instead of inheriting timings of a different graph.
    """
    return hashlib.sha256(model_bytes).hexdigest()[:16]


class HistoryKey(NamedTuple):
    """What one history entry times: ``stage`` (a :func:`stage_id`) on ``arch``
    (``"cpu:2t"``, ``"cuda:NVIDIA H100"``) with inputs of ``footprint``.

    A named tuple, not a frozen dataclass: the scheduler builds one per prediction and per
    recorded task, and a frozen dataclass costs several times more to create and hash."""

    stage: str
    arch: str
    footprint: str


@dataclass(frozen=True)
class HistorySnapshot:
    """Counters of a :class:`HistoryModel` at one instant.

    Fields:
        min_samples: samples an entry needs before it predicts.
        entries: number of keys.
        trusted: keys with at least ``min_samples`` samples.
        samples: samples folded in, all keys together.
        rejected: outliers not folded in, all keys together.
        resets: entries reset after a lasting shift, all keys together.
    """

    min_samples: int
    entries: int
    trusted: int
    samples: int
    rejected: int
    resets: int


class HistoryModel:
    """Running statistics per :class:`HistoryKey`, safe to share between worker threads.

    One lock guards every entry: recording is a few float operations and a sorted insert
    into :data:`WINDOW` samples, far shorter than any task it times, so one lock never
    contends enough to matter.
    """

    def __init__(self, min_samples: int = 5) -> None:
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        self._min_samples = min_samples
        self._entries: dict[HistoryKey, RunningStats] = {}
        self._lock = threading.Lock()

    @property
    def min_samples(self) -> int:
        """Samples an entry needs before :meth:`predict` trusts it."""
        return self._min_samples

    def record(self, key: HistoryKey, duration_s: float) -> bool:
        """Add one measured duration; False when it was rejected as an outlier."""
        value = float(duration_s)
        if not 0 <= value < math.inf:  # also refuses NaN
            raise ValueError(f"duration_s must be finite and >= 0 seconds, got {duration_s!r}")
        with self._lock:
            stats = self._entries.get(key)
            if stats is None:
                stats = self._entries[key] = RunningStats()
            resets = stats.resets
            accepted = stats.add(value, min_samples=self._min_samples)
            if stats.resets != resets:
                _log.info("history %s reset: the last %d samples all exceeded the old mean",
                          key, stats.count)
        return accepted

    def predict(self, key: HistoryKey) -> float:
        """Seconds of ``key``'s typical recent run (the window's median); NaN below
        ``min_samples`` ("run it there to calibrate").

        Without the lock: the scheduler asks for every candidate worker of every task, a dict
        lookup and attribute reads are each atomic, and a median read while a record lands is
        either sample's, both of which are true recent runs."""
        stats = self._entries.get(key)
        if stats is None or stats.count < self._min_samples:
            return math.nan
        return stats.median

    def is_trusted(self, key: HistoryKey) -> bool:
        """Whether ``key`` has enough samples for :meth:`predict` to answer."""
        with self._lock:
            stats = self._entries.get(key)
            return stats is not None and stats.count >= self._min_samples

    def stats(self, key: HistoryKey) -> RunningStats:
        """A copy of ``key``'s statistics (empty when unknown); later records don't change it."""
        with self._lock:
            return copy.deepcopy(self._entries.get(key, RunningStats()))

    def keys(self) -> list[HistoryKey]:
        """Every key with an entry, sorted."""
        with self._lock:
            return sorted(self._entries)

    def batch_points(self, stage: str, arch: str) -> list[tuple[int, float, int]]:
        """``(batch, seconds, count)`` of the trusted entries of ``stage`` on ``arch``
        (seconds as :meth:`predict` gives them).

        The batch is the first dim of every input; footprints where inputs disagree, or
        that hold a scalar, are left out.  One point per entry, sorted by batch: feed
        them to :func:`perfmodels.regression.fit_batch_model`.  Entries that differ in
        non-batch dims (e.g. sequence length) each give a point; callers that vary those
        should filter by footprint themselves.
        """
        points = []
        with self._lock:
            for key, stats in self._entries.items():
                if key.stage != stage or key.arch != arch or stats.count < self._min_samples:
                    continue
                batch = _footprint_batch(key.footprint)
                if batch is not None:
                    points.append((batch, stats.median, stats.count))
        return sorted(points)

    def merge(self, other: HistoryModel) -> None:
        """Fold every entry of ``other`` into this model (exact; ``other`` counts as newer)."""
        with other._lock:
            theirs = copy.deepcopy(other._entries)
        with self._lock:
            for key, stats in theirs.items():
                self._entries.setdefault(key, RunningStats()).merge(stats)

    def statistics(self) -> HistorySnapshot:
        """A frozen snapshot of the model's counters."""
        with self._lock:
            entries = list(self._entries.values())
        return HistorySnapshot(
            min_samples=self._min_samples,
            entries=len(entries),
            trusted=sum(1 for s in entries if s.count >= self._min_samples),
            samples=sum(s.count for s in entries),
            rejected=sum(s.rejected for s in entries),
            resets=sum(s.resets for s in entries),
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"min_samples": int, "entries": [{"stage", "arch", "footprint", "stats"}]}``."""
        with self._lock:
            items = sorted(self._entries.items())
            entries = [
                {"stage": k.stage, "arch": k.arch, "footprint": k.footprint, "stats": s.to_dict()}
                for k, s in items
            ]
        return {"min_samples": self._min_samples, "entries": entries}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistoryModel:
        """Inverse of :meth:`to_dict`; ValueError/TypeError on anything malformed."""
        if not isinstance(data, Mapping):
            raise TypeError(f"history must be a mapping, got {type(data).__name__}")
        model = cls(min_samples=_count(data.get("min_samples"), "min_samples"))
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise TypeError(f"entries must be a list, got {entries!r}")
        for entry in entries:
            key, stats = _entry_from_dict(entry)
            if key in model._entries:
                raise ValueError(f"duplicate history entry {key}")
            model._entries[key] = stats
        return model


def _entry_from_dict(entry: object) -> tuple[HistoryKey, RunningStats]:
    """One ``{"stage", "arch", "footprint", "stats"}`` item of :meth:`HistoryModel.to_dict`."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"history entry must be a mapping, got {entry!r}")
    stage, arch, text = (entry.get(name) for name in ("stage", "arch", "footprint"))
    if not (isinstance(stage, str) and isinstance(arch, str) and isinstance(text, str)):
        raise TypeError(f"stage, arch and footprint must be strings, got {(stage, arch, text)!r}")
    stats = entry.get("stats")
    if not isinstance(stats, Mapping):
        raise TypeError(f"stats of {stage}/{arch}/{text} must be a mapping, got {stats!r}")
    return HistoryKey(stage, arch, text), RunningStats.from_dict(stats)
