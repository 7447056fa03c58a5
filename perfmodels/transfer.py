"""The bus model: how long moving ``nbytes`` from one memory node to another takes.

As in StarPU, a transfer costs ``latency_s + nbytes / bandwidth_bytes_per_s`` on
its link and nothing when source and destination are the same memory node.  A
link is keyed by ``(src, dst, kind)``; memory nodes are strings:

- ``"host:<numa node>"`` — host memory, e.g. ``"host:0"``;
- ``"cuda:<device>"`` — memory of one GPU;
- ``"worker:<address>"`` — memory of another machine (a Dask worker).

Kinds, and which node pairs they may join (the first listed is preferred when a
caller does not name one):

- host <-> host: ``"memcpy"``;
- host <-> cuda: ``"pinned"`` then ``"pageable"`` (each direction its own link);
- cuda <-> cuda: ``"peer"``;
- anything <-> worker: ``"network"``.

Links come from calibration (:func:`calibrate` times real copies and fits each
link by least squares) and are refined online from observed transfers
(:meth:`BusModel.observe`).  A link nobody calibrated or observed enough
predicts NaN: perf models don't guess, NaN means "calibrate first".

Fitting is in relative terms (each point weighs ``1 / duration**2``): timings
span four orders of magnitude between 4 KiB and 64 MiB, and a plain least-squares
fit would let the large copies decide everything, leaving the latency (which
only the small copies show) to noise, often negative.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partitioner.errors import HetschedError, UsageError

FORMAT = "hetsched.bus/1"
KIB = 1024
MIB = 1024 * KIB
DEFAULT_SIZES: tuple[int, ...] = tuple(4 * KIB * 4**i for i in range(8))  # 4 KiB, 16 KiB, ... 64 MiB
DEFAULT_REPEATS = 9  # timed copies per size (after one warm-up); the median is kept
DEFAULT_PRIOR_WEIGHT = 8.0  # a calibrated link counts as this many observations (see LinkModel)
MIN_OBSERVATIONS = 3  # below this, or with a single distinct size, observations are not fitted
MAX_BANDWIDTH_BYTES_PER_S = 1e15  # clamp when timings do not grow with size: the link is all latency
_PER_SIZE_BUDGET_S = 0.1  # stop repeating one size after this long (keeps calibrate() near 1 s)

Progress = Callable[[int, int], None]
LinkKey = tuple[str, str, str]

_KINDS_BY_PAIR: dict[frozenset[str], tuple[str, ...]] = {
    frozenset({"host"}): ("memcpy",),
    frozenset({"host", "cuda"}): ("pinned", "pageable"),
    frozenset({"cuda"}): ("peer",),
}
KINDS: tuple[str, ...] = ("memcpy", "pinned", "pageable", "peer", "network")


class BusFormatError(UsageError):
    """A bus model file that is not ``hetsched.bus/1`` or is inconsistent."""


class CalibrationUnavailable(HetschedError, RuntimeError):
    """The hardware or library a calibration needs (cupy, a GPU) is absent."""


def node_type(node: str) -> str:
    """``"host"``, ``"cuda"`` or ``"worker"`` for a memory node string; ValueError for anything else."""
    prefix, sep, rest = node.partition(":")
    if not sep or not rest or prefix not in ("host", "cuda", "worker"):
        raise UsageError(f"memory node {node!r} is not 'host:<n>', 'cuda:<n>' or 'worker:<address>'")
    if prefix != "worker" and not rest.isdigit():
        raise UsageError(f"memory node {node!r}: the part after ':' must be a number")
    return prefix


def link_kinds(src: str, dst: str) -> tuple[str, ...]:
    """The kinds of link that may join two memory nodes, preferred first."""
    types = frozenset({node_type(src), node_type(dst)})
    if "worker" in types:
        return ("network",)
    return _KINDS_BY_PAIR[types]


# ---------------------------------------------------------------------------------------------
# Fitting


@dataclass
class _Sums:
    """Weighted sums of a relative least-squares fit of ``t = a + s * n`` (weight ``1 / t**2``)."""

    w: float = 0.0
    wn: float = 0.0
    wnn: float = 0.0
    wt: float = 0.0
    wnt: float = 0.0

    def add(self, nbytes: float, duration_s: float) -> None:
        w = 1.0 / (duration_s * duration_s)
        self.w += w
        self.wn += w * nbytes
        self.wnn += w * nbytes * nbytes
        self.wt += w * duration_s
        self.wnt += w * nbytes * duration_s

    def solve(self) -> tuple[float, float]:
        """(latency_s, seconds_per_byte), clamped so that latency >= 0 and seconds_per_byte > 0.

        A negative intercept is refitted through the origin (latency 0); a slope <= 0 (timings
        that do not grow with size) becomes ``1 / MAX_BANDWIDTH_BYTES_PER_S`` with the intercept
        refitted: the link is then all latency.
        """
        det = self.w * self.wnn - self.wn * self.wn
        if det <= 0.0:
            raise UsageError("fitting a link needs at least two distinct transfer sizes")
        slope = (self.w * self.wnt - self.wn * self.wt) / det
        intercept = (self.wt - slope * self.wn) / self.w
        if intercept < 0.0:
            intercept, slope = 0.0, self.wnt / self.wnn
        if slope <= 0.0:
            slope = 1.0 / MAX_BANDWIDTH_BYTES_PER_S
            intercept = max(0.0, (self.wt - slope * self.wn) / self.w)
        return intercept, slope


def _check_point(nbytes: float, duration_s: float) -> None:
    if not (math.isfinite(nbytes) and nbytes >= 0):
        raise UsageError(f"transfer size {nbytes!r} must be a finite number of bytes >= 0")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise UsageError(f"transfer duration {duration_s!r} s must be finite and > 0")


def fit_latency_bandwidth(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Fit ``duration = latency + nbytes / bandwidth`` to ``(nbytes, seconds)`` points.

    Returns ``(latency_s, bandwidth_bytes_per_s)`` with latency >= 0 and bandwidth > 0 (see
    :meth:`_Sums.solve` for the clamps).  Needs two distinct sizes and positive durations.
    """
    sums = _Sums()
    for nbytes, duration_s in points:
        _check_point(nbytes, duration_s)
        sums.add(float(nbytes), float(duration_s))
    latency_s, seconds_per_byte = sums.solve()
    return latency_s, 1.0 / seconds_per_byte


# ---------------------------------------------------------------------------------------------
# Links and the bus


@dataclass
class LinkModel:
    """One link: a calibrated prior, refined by observed transfers.

    ``latency_s`` and ``bandwidth_bytes_per_s`` are the prior (from calibration or
    :meth:`BusModel.set_link`; NaN when there is none).  Observations accumulate in
    relative least-squares sums.  Once there are ``MIN_OBSERVATIONS`` of at least two distinct
    sizes, the observations' own fit ``(a_obs, s_obs)`` (latency, seconds per byte) is blended
    with the prior ``(a0, s0)``::

        (a, s) = alpha * (a_obs, s_obs) + (1 - alpha) * (a0, s0),   alpha = count / (count + prior_weight)

    which is exactly the least-squares fit when the prior is counted as ``prior_weight``
    pseudo-observations taken at the observed sizes (the fit is linear in the targets).
    Both fits are clamped (latency >= 0, bandwidth > 0), so the blend is too.  Without a prior,
    the observations alone decide; without either, :meth:`predict` returns NaN.
    """

    latency_s: float
    bandwidth_bytes_per_s: float
    prior_weight: float = DEFAULT_PRIOR_WEIGHT
    count: int = 0
    min_nbytes: float = math.inf
    max_nbytes: float = -math.inf
    sums: _Sums = field(default_factory=_Sums)

    def __post_init__(self) -> None:
        has_prior = math.isfinite(self.latency_s) or math.isfinite(self.bandwidth_bytes_per_s)
        if has_prior and not (self.latency_s >= 0 and self.bandwidth_bytes_per_s > 0):
            raise UsageError(
                f"link latency {self.latency_s!r} s must be >= 0 and bandwidth "
                f"{self.bandwidth_bytes_per_s!r} B/s > 0 (or both NaN for an uncalibrated link)"
            )
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise UsageError(f"prior_weight {self.prior_weight!r} must be a finite number >= 0")

    @property
    def has_prior(self) -> bool:
        return math.isfinite(self.latency_s)

    @property
    def refined(self) -> bool:
        """Whether enough observations (>= 3, two distinct sizes) take part in predictions."""
        return self.count >= MIN_OBSERVATIONS and self.max_nbytes > self.min_nbytes

    def observe(self, nbytes: int, duration_s: float) -> None:
        """Record one measured transfer of ``nbytes`` that took ``duration_s`` (> 0)."""
        _check_point(nbytes, duration_s)
        self.count += 1
        self.min_nbytes = min(self.min_nbytes, nbytes)
        self.max_nbytes = max(self.max_nbytes, nbytes)
        self.sums.add(float(nbytes), float(duration_s))

    def fitted(self) -> tuple[float, float]:
        """Current ``(latency_s, bandwidth_bytes_per_s)``: prior and observations blended; NaN if neither."""
        if not self.refined:
            return self.latency_s, self.bandwidth_bytes_per_s
        a_obs, s_obs = self.sums.solve()
        if not self.has_prior:
            return a_obs, 1.0 / s_obs
        alpha = self.count / (self.count + self.prior_weight)
        latency_s = alpha * a_obs + (1 - alpha) * self.latency_s
        seconds_per_byte = alpha * s_obs + (1 - alpha) / self.bandwidth_bytes_per_s
        return latency_s, 1.0 / seconds_per_byte

    def predict(self, nbytes: int) -> float:
        """Seconds to move ``nbytes`` on this link: ``latency_s + nbytes / bandwidth`` (fitted)."""
        latency_s, bandwidth = self.fitted()
        return latency_s + nbytes / bandwidth

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_s": _finite_or_none(self.latency_s),
            "bandwidth_bytes_per_s": _finite_or_none(self.bandwidth_bytes_per_s),
            "prior_weight": self.prior_weight,
            "count": self.count,
            "min_nbytes": _finite_or_none(self.min_nbytes),
            "max_nbytes": _finite_or_none(self.max_nbytes),
            "sums": [self.sums.w, self.sums.wn, self.sums.wnn, self.sums.wt, self.sums.wnt],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LinkModel:
        return cls(
            latency_s=_none_to(raw["latency_s"], math.nan),
            bandwidth_bytes_per_s=_none_to(raw["bandwidth_bytes_per_s"], math.nan),
            prior_weight=float(raw["prior_weight"]),
            count=int(raw["count"]),
            min_nbytes=_none_to(raw["min_nbytes"], math.inf),
            max_nbytes=_none_to(raw["max_nbytes"], -math.inf),
            sums=_Sums(*(float(v) for v in raw["sums"])),
        )


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: absent values travel as null."""
    return value if math.isfinite(value) else None


def _none_to(value: float | None, default: float) -> float:
    return default if value is None else float(value)


@dataclass(frozen=True)
class LinkStatistics:
    """A link as it predicts now: fitted values, the prior they came from, observations used."""

    src: str
    dst: str
    kind: str
    latency_s: float
    bandwidth_bytes_per_s: float
    prior_latency_s: float
    prior_bandwidth_bytes_per_s: float
    observations: int


@dataclass(frozen=True)
class BusStatistics:
    """Frozen snapshot of a :class:`BusModel` (links sorted by key)."""

    links: tuple[LinkStatistics, ...]


@dataclass(frozen=True)
class Measurement:
    """One calibration point: median seconds of ``repeats`` copies of ``nbytes`` on one link."""

    src: str
    dst: str
    kind: str
    nbytes: int
    duration_s: float
    repeats: int


class BusModel:
    """Every link of one machine (and its remote workers); thread-safe (one lock, short holds).

    Workers' transfer instruments call :meth:`observe` from their threads while the
    scheduler calls :meth:`predict`, hence the lock.
    """

    def __init__(self, links: Mapping[LinkKey, LinkModel] | None = None) -> None:
        self._lock = threading.Lock()
        self._links: dict[LinkKey, LinkModel] = {}
        for (src, dst, kind), link in (links or {}).items():
            self._check_key(src, dst, kind)
            self._links[(src, dst, kind)] = link

    @property
    def empty(self) -> bool:
        """No link is known: every transfer is free (one memory node) or unknown, so costs nothing."""
        return not self._links

    @staticmethod
    def _check_key(src: str, dst: str, kind: str) -> None:
        allowed = link_kinds(src, dst)
        if kind not in allowed:
            raise UsageError(f"a {kind!r} link cannot join {src} and {dst}; use one of {list(allowed)}")

    def set_link(self, src: str, dst: str, kind: str, latency_s: float, bandwidth_bytes_per_s: float,
                 prior_weight: float = DEFAULT_PRIOR_WEIGHT) -> None:
        """Set (or replace, dropping its observations) the link ``src -> dst`` of ``kind``."""
        self._check_key(src, dst, kind)
        link = LinkModel(latency_s, bandwidth_bytes_per_s, prior_weight)
        with self._lock:
            self._links[(src, dst, kind)] = link

    def link(self, src: str, dst: str, kind: str | None = None) -> LinkModel | None:
        """The link a transfer would use (``kind=None``: the first known of the preferred kinds)."""
        kinds = link_kinds(src, dst) if kind is None else (kind,)
        with self._lock:
            for k in kinds:
                if (src, dst, k) in self._links:
                    return self._links[(src, dst, k)]
        return None

    def predict(self, src: str, dst: str, nbytes: int, kind: str | None = None) -> float:
        """Seconds to move ``nbytes`` from ``src`` to ``dst``: 0.0 on one node, NaN for an unknown link."""
        if nbytes < 0:
            raise UsageError(f"transfer size {nbytes!r} must be >= 0 bytes")
        if src == dst:
            node_type(src)
            return 0.0
        link = self.link(src, dst, kind)
        if link is None:
            return math.nan
        with self._lock:
            return link.predict(nbytes)

    def observe(self, src: str, dst: str, nbytes: int, duration_s: float, kind: str | None = None) -> None:
        """Feed one measured transfer to its link (created uncalibrated if absent); same node: ignored."""
        if src == dst:
            return
        kind = kind if kind is not None else link_kinds(src, dst)[0]
        self._check_key(src, dst, kind)
        with self._lock:
            link = self._links.setdefault((src, dst, kind), LinkModel(math.nan, math.nan))
            link.observe(nbytes, duration_s)

    def keys(self) -> list[LinkKey]:
        with self._lock:
            return sorted(self._links)

    def statistics(self) -> BusStatistics:
        with self._lock:
            items = sorted(self._links.items())
            return BusStatistics(tuple(
                LinkStatistics(src, dst, kind, *link.fitted(), link.latency_s, link.bandwidth_bytes_per_s,
                               link.count)
                for (src, dst, kind), link in items
            ))

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            links = [
                {"src": src, "dst": dst, "kind": kind, **link.to_dict()}
                for (src, dst, kind), link in sorted(self._links.items())
            ]
        return {"format": FORMAT, "links": links}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BusModel:
        if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, Mapping) else None
            raise BusFormatError(f"bus model format {found!r} is not {FORMAT!r}; re-run the bus calibration")
        try:
            links = {(e["src"], e["dst"], e["kind"]): LinkModel.from_dict(e) for e in raw["links"]}
            return cls(links)
        except (KeyError, TypeError, ValueError) as exc:
            raise BusFormatError(
                f"bus model has a broken link entry ({exc}); re-run the bus calibration"
            ) from exc

    @classmethod
    def from_measurements(cls, measurements: Iterable[Measurement],
                          prior_weight: float = DEFAULT_PRIOR_WEIGHT) -> BusModel:
        """Fit one link per ``(src, dst, kind)`` of the calibration points."""
        grouped: dict[LinkKey, list[tuple[int, float]]] = {}
        for m in measurements:
            grouped.setdefault((m.src, m.dst, m.kind), []).append((m.nbytes, m.duration_s))
        links = {
            key: LinkModel(*fit_latency_bandwidth(points), prior_weight) for key, points in grouped.items()
        }
        return cls(links)


# ---------------------------------------------------------------------------------------------
# Calibration


def _median_copy_s(copy: Callable[[], float], repeats: int, budget_s: float) -> tuple[float, int]:
    """Median of ``repeats`` timed calls of ``copy`` (which returns its own duration), after one warm-up.

    Stops early (but after at least ``MIN_OBSERVATIONS`` runs) once ``budget_s`` of copying
    is spent, so that the 64 MiB size does not dominate the calibration time.
    """
    copy()
    runs: list[float] = []
    while len(runs) < repeats:
        runs.append(copy())
        if len(runs) >= MIN_OBSERVATIONS and sum(runs) > budget_s:
            break
    return float(np.median(runs)), len(runs)


def cache_bytes(default: int = 32 * MIB) -> int:
    """Largest CPU cache cpu0 sees (Linux ``/sys``), ``default`` where that cannot be read."""
    found = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()  # e.g. "32768K"
        scale = {"K": KIB, "M": MIB, "G": 1024 * MIB}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            found.append(int(digits) * scale)
    return max(found, default=default)


class _Walk:
    """Windows of ``nbytes`` that walk through two buffers, so each copy's memory is cache-cold.

    The buffers are ``2 * cache`` (or the largest size) long, so a window is reused only
    after at least four cache sizes of other traffic.  Cold copies are what a transfer
    between memory nodes sees (another core wrote the tensor), and they follow one line;
    cache-hot copies would add a second, faster regime that no ``latency + bytes/bandwidth``
    fits (here 4 MiB hot copies ran 4x faster than 16 MiB ones).
    """

    def __init__(self, largest: int) -> None:
        self.size = max(largest, 2 * cache_bytes())
        self.src = np.ones(self.size, dtype=np.uint8)  # written, so no page fault is timed
        self.dst = np.ones(self.size, dtype=np.uint8)
        self.cursor = 0

    def next(self, nbytes: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cursor + nbytes > self.size:
            self.cursor = 0
        window = slice(self.cursor, self.cursor + nbytes)
        self.cursor += nbytes
        return self.src[window], self.dst[window]


def calibrate_host(sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = DEFAULT_REPEATS,
                   progress: Progress | None = None,
                   clock: Callable[[], float] = time.perf_counter) -> list[Measurement]:
    """Time ``np.copyto`` between two preallocated host buffers: the ``host:0 -> host:0`` memcpy link.

    Buffers are allocated and written once, then copies walk through them (see :class:`_Walk`).
    This link never delays a transfer (the same node costs nothing) but prices host-side data
    handling; cross-NUMA links need buffers bound to nodes and are not measured here.
    """
    if not sizes or repeats < 1 or min(sizes) < 1:
        raise UsageError(
            f"calibration needs sizes >= 1 byte (got {list(sizes)}) and repeats >= 1 (got {repeats})"
        )
    walk = _Walk(max(sizes))
    measurements = []
    for done, nbytes in enumerate(sizes, start=1):

        def copy(nbytes: int = nbytes) -> float:
            a, b = walk.next(nbytes)
            start = clock()
            np.copyto(b, a)
            return clock() - start

        duration_s, runs = _median_copy_s(copy, repeats, _PER_SIZE_BUDGET_S)
        measurements.append(Measurement("host:0", "host:0", "memcpy", nbytes, duration_s, runs))
        if progress is not None:
            progress(done, len(sizes))
    return measurements


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise CalibrationUnavailable("CUDA calibration needs cupy: pip install 'hetsched[gpu]'") from exc
    return cupy


def cuda_device_count() -> int:
    """GPUs cupy can see; 0 without cupy or a CUDA driver."""
    try:
        cupy = _import_cupy()
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no cupy, no driver, no device: all mean "no GPU to calibrate"
        return 0


def calibrate_cuda(device: int = 0, sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = DEFAULT_REPEATS,
                   progress: Progress | None = None) -> list[Measurement]:
    """Time host <-> ``cuda:<device>`` copies, pinned and pageable, each direction, with CUDA events.

    Copies are ``cudaMemcpyAsync`` on a non-default stream between one device buffer and a
    pinned (page-locked) or pageable host buffer on ``host:0``, timed by events recorded on
    that stream.  Raises :class:`CalibrationUnavailable` without cupy or without that GPU.
    """
    cupy = _import_cupy()
    count = cuda_device_count()
    if not 0 <= device < count:
        raise CalibrationUnavailable(f"no CUDA device {device}: cupy sees {count} device(s)")
    largest, node = max(sizes), f"cuda:{device}"
    runtime = cupy.cuda.runtime
    with cupy.cuda.Device(device):
        stream = cupy.cuda.Stream(non_blocking=True)
        on_device = cupy.zeros(largest, dtype=cupy.uint8)
        pinned_memory = cupy.cuda.alloc_pinned_memory(largest)  # alive (by this name) until we return
        pageable = np.ones(largest, dtype=np.uint8)
        hosts = {"pinned": pinned_memory.ptr, "pageable": pageable.ctypes.data}
        plan = [(kind, to_device, n) for kind in hosts for to_device in (True, False) for n in sizes]
        measurements = []
        for done, (kind, to_device, nbytes) in enumerate(plan, start=1):
            host_ptr, device_ptr = hosts[kind], on_device.data.ptr
            dst, src, direction = ((device_ptr, host_ptr, runtime.memcpyHostToDevice) if to_device
                                   else (host_ptr, device_ptr, runtime.memcpyDeviceToHost))

            def copy(dst: int = dst, src: int = src, nbytes: int = nbytes,
                     direction: int = direction) -> float:
                start, end = cupy.cuda.Event(), cupy.cuda.Event()
                start.record(stream)
                runtime.memcpyAsync(dst, src, nbytes, direction, stream.ptr)
                end.record(stream)
                end.synchronize()
                return float(cupy.cuda.get_elapsed_time(start, end)) / 1000.0

            duration_s, runs = _median_copy_s(copy, repeats, _PER_SIZE_BUDGET_S)
            pair = (node, "host:0") if not to_device else ("host:0", node)
            measurements.append(Measurement(*pair, kind, nbytes, duration_s, runs))
            if progress is not None:
                progress(done, len(plan))
    return measurements


def calibrate(progress: Progress | None = None, sizes: Sequence[int] = DEFAULT_SIZES,
              repeats: int = DEFAULT_REPEATS) -> BusModel:
    """Calibrate this machine's bus: host memcpy always, then every GPU cupy sees.

    ``progress(done, total)`` counts sizes times links over the whole calibration.
    """
    devices = cuda_device_count()
    per_device = 4 * len(sizes)  # pinned/pageable x H2D/D2H
    total = len(sizes) + devices * per_device

    def offset_by(start: int) -> Progress | None:
        if progress is None:
            return None
        report = progress
        return lambda done, _total: report(start + done, total)

    measurements = calibrate_host(sizes, repeats, offset_by(0))
    for device in range(devices):
        start = len(sizes) + device * per_device
        measurements += calibrate_cuda(device, sizes, repeats, offset_by(start))
    return BusModel.from_measurements(measurements)
