"""Bus calibration on this machine: every link's latency and bandwidth, as the bus model fits them.

Runs :func:`perfmodels.transfer.calibrate` (host memcpy always; pinned and
pageable host <-> GPU copies for each GPU cupy sees), prints one line per link,
writes bench/results/bus_calibration.json (the raw points and the model in its
``hetsched.bus/1`` form), and writes its section of bench/RESULTS.md.

    PYTHONPATH=. python bench/bus_calibration.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from results_md import write_section

from perfmodels.transfer import (
    DEFAULT_REPEATS,
    DEFAULT_SIZES,
    BusModel,
    calibrate_cuda,
    calibrate_host,
    cuda_device_count,
)

HERE = Path(__file__).parent


def measure(repeats: int) -> tuple[list[Any], float]:
    """All calibration points (host, then each GPU) and the seconds calibrating took."""
    start = time.perf_counter()
    points = calibrate_host(DEFAULT_SIZES, repeats, progress=_progress("host memcpy"))
    for device in range(cuda_device_count()):
        points += calibrate_cuda(device, DEFAULT_SIZES, repeats, progress=_progress(f"cuda:{device}"))
    return points, time.perf_counter() - start


def _progress(label: str) -> Any:
    def report(done: int, total: int) -> None:
        print(f"\r{label}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return report


def rows(bus: BusModel) -> list[dict[str, Any]]:
    return [
        {"src": s.src, "dst": s.dst, "kind": s.kind, "latency_us": round(s.latency_s * 1e6, 3),
         "bandwidth_gb_per_s": round(s.bandwidth_bytes_per_s / 1e9, 3)}
        for s in bus.statistics().links
    ]


def markdown(table: list[dict[str, Any]], seconds: float) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "## Bus calibration",
        "",
        f"{date.today()}, {cpu}, {os.cpu_count()} CPUs, {cuda_device_count()} GPU(s); "
        f"`python bench/bus_calibration.py` ({seconds:.2f} s). Fit: latency + bytes / bandwidth, "
        "relative least squares over 4 KiB .. 64 MiB (median of repeats per size).",
        "",
        "| link | kind | latency (µs) | bandwidth (GB/s) |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {r['src']} → {r['dst']} | {r['kind']} | {r['latency_us']:.2f} "
              f"| {r['bandwidth_gb_per_s']:.2f} |" for r in table]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    args = parser.parse_args()
    points, seconds = measure(args.repeats)
    bus = BusModel.from_measurements(points)
    table = rows(bus)
    for r in table:
        print(f"{r['src']:>8} -> {r['dst']:<8} {r['kind']:<9} latency {r['latency_us']:9.2f} us   "
              f"bandwidth {r['bandwidth_gb_per_s']:8.2f} GB/s")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    result = {"calibration_s": seconds, "links": table, "points": [asdict(p) for p in points],
              "model": bus.to_dict()}
    (out_dir / "bus_calibration.json").write_text(json.dumps(result, indent=1) + "\n")
    write_section(markdown(table, seconds), Path(__file__).parent / "RESULTS.md", marker="bus_calibration")
    print(f"\nwrote {out_dir / 'bus_calibration.json'} and its section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
