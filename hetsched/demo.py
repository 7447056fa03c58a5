"""The main job on an embedded default: zoo model -> profile -> partition -> run the parts -> check.

Until the runtime exists, the parts run one after another in plan order
(:class:`hetsched.sequential.SequentialRunner`) and the answer is compared with
plain ONNX Runtime on the whole model.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from hetsched import zoo
from hetsched.sequential import SequentialRunner
from partitioner.feeds import random_feeds
from partitioner.graph import build_graph
from partitioner.partition import partition
from partitioner.plan import PartitionPlan
from perfmodels.measure import cpu_session
from perfmodels.profile import DEFAULT_METHOD, profile

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DemoReport:
    """What the demo did and found; times are medians in milliseconds."""

    model: str
    batch: int
    plan: PartitionPlan
    plan_dir: Path
    profile_method: str
    max_abs_diff: float
    whole_ms: float
    parts_ms: float
    step_seconds: dict[str, float]


def run_demo(
    model: str = "googlenet",
    ratios: str = "0.8,0.2",
    batch: int = 1,
    out_dir: str | None = None,
    runs: int = 5,
    progress: Callable[[str], Progress] | None = None,
) -> DemoReport:
    """Run the whole pipeline once; ``progress(label)`` returns a callback for each long step."""
    steps: dict[str, float] = {}
    clock = time.perf_counter
    start = clock()
    proto = zoo.build(model)
    steps["build"] = clock() - start
    start = clock()
    graph = build_graph(proto, batch=batch)
    costs = profile(graph, DEFAULT_METHOD, progress=progress("profile") if progress else None)
    graph = graph.with_costs(costs.seconds, costs.arch, costs.method)
    steps["profile"] = clock() - start
    start = clock()
    result = partition(graph, ratios, source_label=f"zoo:{model}")
    plan_dir = Path(out_dir or tempfile.mkdtemp(prefix="hetsched-demo-"))
    result.save(plan_dir)
    steps["partition"] = clock() - start
    start = clock()
    feeds = random_feeds(proto, batch)
    diff, whole_ms, parts_ms = _check(proto, result.plan, plan_dir, feeds, runs)
    steps["run"] = clock() - start
    return DemoReport(model, batch, result.plan, plan_dir, costs.method, diff, whole_ms, parts_ms, steps)


def _check(
    proto: onnx.ModelProto, plan: PartitionPlan, plan_dir: Path, feeds: dict[str, np.ndarray], runs: int
) -> tuple[float, float, float]:
    whole = cpu_session(proto)
    parts = SequentialRunner(plan, plan_dir)
    names = [o.name for o in whole.get_outputs()]
    expected = dict(zip(names, whole.run(names, feeds)))
    got = parts.run(feeds)
    diff = max(float(np.max(np.abs(expected[n] - got[n]))) if expected[n].size else 0.0 for n in names)
    whole_ms = _median_ms(lambda: whole.run(names, feeds), runs)
    parts_ms = _median_ms(lambda: parts.run(feeds), runs)
    return diff, whole_ms, parts_ms


def _median_ms(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def format_report(report: DemoReport) -> str:
    """A short table: parts, share of cost, cut bytes, and the check against the whole model."""
    plan = report.plan
    lines = [
        f"model {report.model} (zoo), batch {report.batch}, costs from {report.profile_method}, "
        f"method {plan.method}, ratios {','.join(f'{r:g}' for r in plan.ratios)}",
        f"{'part':>4}  {'nodes':>5}  {'target':>6}  {'share':>6}  {'cut out':>10}  file",
    ]
    for part in plan.parts:
        out_bytes = sum(c.nbytes * len(c.consumers) for c in plan.cuts if c.producer == part.index)
        lines.append(
            f"{part.index:>4}  {len(part.nodes):>5}  {part.target_share:>6.1%}  {part.cost_share:>6.1%}  "
            f"{_human_bytes(out_bytes):>10}  {report.plan_dir / part.file}"
        )
    verdict = "OK" if report.max_abs_diff <= 1e-4 else "MISMATCH"
    lines += [
        f"cut bytes: {_human_bytes(plan.cut_bytes)}; imbalance {plan.quality.get('imbalance', 0):.2%}",
        f"max |parts - whole| = {report.max_abs_diff:.2e}  [{verdict}]",
        f"whole model {report.whole_ms:.2f} ms, parts in plan order {report.parts_ms:.2f} ms "
        f"(one after another on this CPU; median)",
        "steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.step_seconds.items()),
    ]
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
