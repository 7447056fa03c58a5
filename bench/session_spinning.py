"""A wide worker's request time under ONNX Runtime's three ways of idling its intra-op threads.

A wide worker runs a plan's stages one after another, each in its own multi-thread session on the
same cores.  Its intra-op threads may:

- ``block``: sleep whenever they find no work, between operators too (hetsched until 2026-12-02);
- ``spin``: spin before sleeping, during and after a run (ORT's default, what plain ORT and
  Triton's sessions do): the threads of the stage that just ran keep the cores from the next stage;
- ``spin, stop after run``: spin during a run, stop when it returns (``session.force_spinning_stop``,
  what perfmodels.measure.session_options(spin=True) gives a local worker's sessions now).

For each model, whole and split 0.8/0.2 with METIS on profiled costs, the three variants time the
same request through sessions of as many threads as the machine has cores, taking short turns;
medians.  Writes its section of bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/session_spinning.py [--models googlenet,yolov8n] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from results_md import package_version, write_section

from hetsched import zoo
from hetsched.sequential import SequentialRunner
from partitioner.feeds import random_feeds
from partitioner.graph import build_graph
from partitioner.partition import partition
from partitioner.plan import PartitionPlan
from perfmodels.measure import session_options
from perfmodels.profile import DEFAULT_METHOD, profile

HERE = Path(__file__).parent
VARIANTS = {"block": ("0", "0"), "spin": ("1", "0"), "spin, stop after run": ("1", "1")}
RUNS = 4  # timed requests per variant and turn
SETTLE_S = 0.1  # after a turn: longer than ORT's spinning after a run (~60 ms), which would slow the next


def runner(plan: PartitionPlan, plan_dir: Path, threads: int, spin: str, stop: str) -> SequentialRunner:
    """The plan's parts in sessions of ``threads`` threads idling as the variant says."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # overwriting an entry warns, and overwriting is the point
    options = session_options(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.force_spinning_stop", stop)
    reference = SequentialRunner(plan, plan_dir)
    reference.sessions = [ort.InferenceSession(str(plan_dir / part.file), options,
                                               providers=["CPUExecutionProvider"])
                          for part in reference.plan.parts]
    return reference


def measure(name: str, ratios: str, threads: int, rounds: int) -> dict[str, float]:
    proto = zoo.build(name)
    graph = build_graph(proto, batch=1)
    costs = profile(graph, DEFAULT_METHOD)
    graph = graph.with_costs(costs.seconds, costs.arch, costs.method)
    plan_dir = Path(tempfile.mkdtemp(prefix="spin-"))
    result = partition(graph, ratios, source_label=f"zoo:{name}")
    result.save(plan_dir)
    feeds = random_feeds(proto, 1)
    runners = {label: runner(result.plan, plan_dir, threads, *flags) for label, flags in VARIANTS.items()}
    for each in runners.values():
        for _ in range(3):
            each.run(feeds)
    # short turns, so the machine's drift hits every variant alike; a turn's first request finds
    # the threads asleep (a server at low load), the others find them just back from a run
    after_idle: dict[str, list[float]] = {label: [] for label in runners}
    back_to_back: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(rounds):
        for label, each in runners.items():
            for index in range(RUNS):
                start = time.perf_counter()
                each.run(feeds)
                (back_to_back if index else after_idle)[label].append(time.perf_counter() - start)
            time.sleep(SETTLE_S)
    out = {f"{label}, {kind}": statistics.median(values[label]) * 1e3 for label in runners
           for kind, values in (("after idle", after_idle), ("back to back", back_to_back))}
    print(f"{name} {ratios}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in out.items()), flush=True)
    return out


def report(rows: dict[tuple[str, str], dict[str, float]], threads: int, command: str) -> str:
    kinds = ("after idle", "back to back")
    lines = [
        "## Intra-op threads: block, spin, or spin and stop after the run (bench/session_spinning.py)",
        "",
        f"`{command}` on {platform.node()} ({os.cpu_count()} cores, no GPU), {date.today().isoformat()}, "
        f"onnxruntime {package_version('onnxruntime')}. One batch-1 request through {threads}-thread "
        "sessions, the plan's parts one after another (as a wide worker runs a plan's stages). The "
        f"variants take turns of {RUNS} requests, {SETTLE_S * 1e3:.0f} ms apart: a turn's first request "
        "comes after idle time (a server at low load), the others back to back. Median ms over all "
        "turns; ratio: spin and stop after the run, against block.",
        "",
        "| model | plan | " + " | ".join(f"{v}, {k}" for k in kinds for v in VARIANTS)
        + " | ratio after idle | ratio back to back |",
        "|---|---|" + "---:|" * (2 * len(VARIANTS) + 2),
    ]
    for (name, ratios), ms in rows.items():
        cells = " | ".join(f"{ms[f'{v}, {k}']:.1f}" for k in kinds for v in VARIANTS)
        ratios_cells = " | ".join(f"{ms[f'spin, stop after run, {k}'] / ms[f'block, {k}']:.2f}"
                                  for k in kinds)
        lines.append(f"| {name} | {ratios} | {cells} | {ratios_cells} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="googlenet,yolov8n,vit-tiny,resnet50")
    parser.add_argument("--plans", default="1;0.8,0.2", help="semicolon-separated ratios")
    parser.add_argument("--rounds", type=int, default=30, help="turns per variant")
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    rows = {(name, ratios): measure(name, ratios, threads, args.rounds)
            for name in args.models.split(",") for ratios in args.plans.split(";")}
    command = "PYTHONPATH=.:bench python bench/session_spinning.py " + " ".join(sys.argv[1:])
    text = report(rows, threads, command.strip())
    print(text)
    write_section(text, HERE / "RESULTS.md", "session_spinning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
