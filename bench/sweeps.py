"""The StarONNX paper's sweeps on `hetsched serve`: partition ratios, CPU core grouping, and the
batch size, each under the same open-loop Poisson load through ``tritonclient`` (bench/load.py).

- ``--sweep ratios``: whole model, 75/25, 80/20, 85/15, 90/10 (METIS parts on the same cores, so
  a split can only pay by pipelining its parts on different workers).
- ``--sweep groups``: core groups ``1x<cores>`` with wide and narrow workers (the default),
  ``<cores>x1`` (one-core groups only) and a single core (``1x1``); on a machine of several NUMA
  nodes also one group per node (``numa``) against groups of the same sizes whose cores alternate
  between the nodes (a core list, :func:`cross_node_groups`).  With one node the two coincide:
  the report says so rather than sweep them.
- ``--sweep batch``: the largest batch the dynamic batcher may form (1, 2, 4, 8); at each rate
  the batch chooser picks the size minimizing expected latency, and the daemon's statistics
  extension says which sizes ran.
- ``--sweep streams``: GPU workers (CUDA streams) per GPU, 1 to 4 (``hetsched serve --gpu-streams``),
  beside the CPU's workers.  It needs a GPU and onnxruntime's CUDA provider, and says so where
  they are missing (this machine).

Each configuration is a fresh daemon (its own perf-model store, warmed up) offered the same rates,
in fractions of the first configuration's closed-loop capacity, measured first.  Writes
bench/results/sweep_<name>.json, bench/results/sweep_<name>.png (p99 against offered rate) and its
section of bench/RESULTS.md.

    PYTHONPATH=.:bench python bench/sweeps.py --sweep ratios [--model googlenet] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

import onnx
from load import LoadResult, Target, closed_loop, open_loop
from results_md import write_section

from hetsched import zoo
from hetsched.daemon.process import DaemonProcess
from hetsched.progress import ProgressBar

HERE = Path(__file__).parent
FRACTIONS = (0.3, 0.6, 0.85, 1.1)


STREAMS = (1, 2, 3, 4)


def cross_node_groups(node_cores: dict[int, list[int]]) -> str:
    """A core-list spec with as many groups as nodes, each as big as a node's share, whose cores
    alternate between the nodes: the arbitrary grouping that NUMA grouping is measured against."""
    pool = [core for rank in range(max(map(len, node_cores.values())))
            for cores in node_cores.values() if rank < len(cores) for core in cores[rank:rank + 1]]
    size = len(pool) // len(node_cores)
    return ";".join(",".join(map(str, pool[i * size:(i + 1) * size])) for i in range(len(node_cores)))


def configurations(sweep: str, cores: int) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Label -> (config.pbtxt, more `hetsched serve` options) of each point of the sweep."""

    def param(key: str, value: str) -> str:
        return f'parameters {{ key: "hetsched.{key}" value {{ string_value: "{value}" }} }}\n'

    if sweep == "ratios":
        return {
            label: (param("ratios", label), ())
            for label in ("1.0", "0.75,0.25", "0.8,0.2", "0.85,0.15", "0.9,0.1")
        }
    if sweep == "groups":
        from hetsched.topology import discover

        specs = [f"1x{cores}", f"{cores}x1", "1x1"]
        nodes = discover().node_cores()
        if len(nodes) > 1:
            specs += ["numa", cross_node_groups(nodes)]
        return {spec: (param("workers", spec), ()) for spec in specs}
    if sweep == "batch":
        return {f"max batch {n}": (f"max_batch_size: {n}\ndynamic_batching {{ }}\n" if n > 1
                                   else "max_batch_size: 0\n", ()) for n in (1, 2, 4, 8)}
    if sweep == "streams":
        from hetsched.topology import discover_gpus

        if not discover_gpus():
            raise SystemExit("--sweep streams needs a CUDA GPU and onnxruntime's CUDA provider "
                             "(pip install onnxruntime-gpu on a CUDA machine); this machine has none")
        return {f"{n} stream{'s' * (n > 1)}": ("", ("--gpu-streams", str(n))) for n in STREAMS}
    raise SystemExit(f"unknown sweep {sweep!r}: ratios, groups, batch or streams")


def run(sweep: str, model_name: str, duration: float) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    proto = zoo.build(model_name)
    configs = configurations(sweep, cores)
    from hetsched.topology import discover

    nodes = len(discover().numa_nodes)
    out: dict[str, Any] = {"sweep": sweep, "model": model_name, "cores": cores, "numa_nodes": nodes,
                           "points": {}}
    bar = ProgressBar(f"sweep {sweep}")
    with tempfile.TemporaryDirectory() as scratch:
        base_rate = 0.0
        for index, (label, (config, options)) in enumerate(configs.items()):
            repository = Path(scratch) / f"repo{index}"
            (repository / model_name / "1").mkdir(parents=True)
            onnx.save_model(proto, str(repository / model_name / "1" / "model.onnx"))
            (repository / model_name / "config.pbtxt").write_text(config)
            with DaemonProcess(repository, *options, perfmodel_dir=Path(scratch) / f"perf{index}") as server:
                target = Target(f"grpc://{server.grpc}", model_name)
                if (
                    not base_rate
                ):  # the first config's capacity (2 requests in flight per core) sets the rates
                    base_rate = closed_loop(target, 2 * cores, duration).achieved_rate
                    out["base_rate"] = base_rate
                results: list[LoadResult] = []
                for fraction in FRACTIONS:
                    results.append(open_loop(target, fraction * base_rate, duration, seed=index))
                stats = target.client().get_inference_statistics(model_name, as_json=True)
                batches = {
                    int(b["batch_size"]): int(b["compute_infer"]["count"])
                    for b in stats["model_stats"][0].get("batch_stats", [])
                }
                out["points"][label] = {
                    "config": config,
                    "options": list(options),
                    "results": [asdict(r) for r in results],
                    "batches": batches,
                }
            bar(index + 1, len(configs))
    return out


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, point in out["points"].items():
        rows = point["results"]
        ax.plot([r["offered_rate"] for r in rows], [r["p99_ms"] for r in rows], "-o", label=label)
    ax.set_xlabel("offered requests / s (Poisson)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{out['model']}: sweep of {out['sweep']} ({out['cores']} cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(out: dict[str, Any], args: argparse.Namespace) -> str:
    rates = [r["offered_rate"] for r in next(iter(out["points"].values()))["results"]]
    lines = [
        f"## Sweep of {out['sweep']} (bench/sweeps.py)",
        "",
        f"`PYTHONPATH=.:bench python bench/sweeps.py --sweep {args.sweep} --model {args.model} "
        f"--duration {args.duration}` on {platform.node()} ({out['cores']} cores, "
        f"{out.get('numa_nodes', 1)} NUMA node{'s' * (out.get('numa_nodes', 1) > 1)}"
        + ("; grouping by node and an arbitrary grouping coincide" if out.get("numa_nodes", 1) == 1
           and out["sweep"] == "groups" else "") + "), "
        f"{date.today().isoformat()}. `hetsched serve` per configuration (fresh perf models, warmed up), "
        f"open-loop Poisson load through tritonclient gRPC at {', '.join(f'{r:.0f}' for r in rates)} req/s "
        f"({', '.join(f'{f:.0%}' for f in FRACTIONS)} of the first configuration's closed-loop capacity, "
        f"{out['base_rate']:.1f} req/s with {2 * out['cores']} requests in flight). p50 / p99 ms and "
        "achieved req/s per rate:",
        "",
        "| configuration | " + " | ".join(f"{r:.0f} req/s" for r in rates) + " | batches run |",
        "|---|" + "---:|" * len(rates) + "---|",
    ]
    for label, point in out["points"].items():
        cells = [
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} ({r['achieved_rate']:.0f})" for r in point["results"]
        ]
        batches = ", ".join(f"{b}: {n}" for b, n in sorted(point["batches"].items()))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {batches} |")
    lines += ["", f"Plot: bench/results/sweep_{out['sweep']}.png."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", required=True, choices=["ratios", "groups", "batch", "streams"])
    parser.add_argument("--model", default="googlenet")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    args = parser.parse_args()
    out = run(args.sweep, args.model, args.duration)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"sweep_{args.sweep}.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(out, HERE / "results" / f"sweep_{args.sweep}.png")
    text = report(out, args)
    print(text)
    write_section(text, HERE / "RESULTS.md", f"sweep_{args.sweep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
