"""The two node-profiling methods side by side: how close each one's sum of node times comes to
the measured whole-model run, and how long profiling takes.  Backs the choice of default in
perfmodels/profile.py and the README.

    python bench/profile_methods.py [--models resnet18,...] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

from results_md import write_section

from hetsched import zoo
from partitioner.graph import build_graph
from perfmodels.profile import METHODS, profile

HERE = Path(__file__).parent
MODELS = "lenet5,resnet18,resnet50,vgg16,mobilenetv2,googlenet,nfnet-f0-like,vit-tiny,control-flow"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    lines = ["## Profiling methods (bench/profile_methods.py)", "",
             f"`python bench/profile_methods.py --threads {args.threads}` on {date.today()}, "
             f"{platform.node()} "
             "(2-core shared VM), batch 1. Ratio = sum of node costs / whole-model time (1.00 is exact).", "",
             "| model | nodes | " + " | ".join(f"{m}: ratio | {m}: wall s" for m in METHODS) + " |",
             "|---|---|" + "---|---|" * len(METHODS)]
    for name in args.models.split(","):
        graph = build_graph(zoo.build(name))
        cells = []
        for method in METHODS:
            started = time.perf_counter()
            costs = profile(graph, method, threads=args.threads)
            wall = time.perf_counter() - started
            cells += [f"{costs.total_s() / costs.whole_model_s:.2f}", f"{wall:.1f}"]
        lines.append(f"| {name} | {len(graph)} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    write_section("\n".join(lines) + "\n", HERE / "RESULTS.md", marker="profile_methods")
    return 0


if __name__ == "__main__":
    sys.exit(main())
