"""hetsched against a real Triton, side by side in one run: the same model file, the same client
(``tritonclient``), the same open-loop Poisson load, swept from light load to past saturation.

For each zoo model: measure the machine's limit (one ONNX Runtime thread per
core, each at its best batch size: the sum of per-core isolated throughputs),
then for each server configuration start the server, warm it up, and offer
Poisson load at fractions of that limit.  Triton runs the ONNX file through its
Python backend with ONNX Runtime (its native ONNX Runtime backend is not on
PyPI; see hetsched/tritonserver.py) in the static configurations a Triton user
picks from — one instance with every core (latency), one instance per core
(throughput), the same with its dynamic batcher — and hetsched runs as
``hetsched serve`` does by default, which adapts between the two.

This VM's speed moves by 10-20% from one minute to the next, and a p99 of a
hundred requests moves with it: one sweep per configuration cannot say which of
two close configurations has the lower p99 at a rate.  ``--rounds N`` runs every
configuration's sweep N times, the configurations interleaved within each round,
and reports per point the median over rounds (with the range), and how often, round
by round, hetsched's default had the lowest p99 of that round's Triton
configurations.

``--triton-url host:port`` measures an already-running Triton instead of starting local ones (the
NGC container on a GPU box, say, with its native ONNX Runtime backend): it must serve each model
under its zoo name (``hetsched zoo <name> --out model.onnx`` writes the file), on the port of the
protocol chosen; its own model configuration decides its instances and batching.

Writes bench/results/<section>.json (every round's results), bench/results/<section>_<model>.png
(p99 latency against achieved throughput per configuration, and the best of
each server, on the medians), and its section of bench/RESULTS.md.

    PYTHONPATH=. python bench/compare_triton.py [--models googlenet,resnet50,vit-tiny] [--duration 6]
        [--min-requests 100] [--rounds 1] [--protocol grpc|http] [--triton-url host:port]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from load import LoadResult, Target, closed_loop, open_loop, server_url
from results_md import write_section

from hetsched import zoo
from hetsched.daemon.process import DaemonProcess
from partitioner.feeds import random_feeds

HERE = Path(__file__).parent
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.85, 1.0, 1.15)
Rounds = dict[str, list[list[LoadResult]]]  # per configuration, its sweep in each round


@dataclass(frozen=True)
class ServerSetup:
    """One server configuration of the sweep."""

    server: str  # "hetsched" or "triton"
    label: str
    config_pbtxt: str = ""  # hetsched: the model's config.pbtxt
    triton: Any = None  # triton: a TritonConfig
    url: str = ""  # triton: an already-running server's host:port, measured instead of a local one


def setups(cores: int, triton_url: str = "") -> list[ServerSetup]:
    """hetsched's configurations, then Triton's: the local static ones, or the running one at
    ``triton_url``."""
    from hetsched.tritonserver import TritonConfig

    one_core_groups = f'parameters {{ key: "hetsched.workers" value: {{ string_value: "{cores}x1" }} }}\n'
    made = [
        ServerSetup("hetsched", "hetsched (default)"),
        ServerSetup("hetsched", "hetsched b1", "max_batch_size: 0\n"),
        # Triton's one instance per core, in hetsched: no wide worker, nothing to choose but which core.
        # What it loses to Triton's 2x1 is the daemon's own cost; what b1 loses to it, the choices.
        ServerSetup("hetsched", f"hetsched b1 {cores}x1", "max_batch_size: 0\n" + one_core_groups),
    ]
    if triton_url:
        return [*made, ServerSetup("triton", f"triton at {triton_url}", url=triton_url)]
    for config in (
        TritonConfig(instances=1, threads=cores),
        TritonConfig(instances=cores, threads=1),
        TritonConfig(instances=cores, threads=1, max_batch_size=8, max_queue_delay_us=2000),
    ):
        made.append(ServerSetup("triton", config.label(), triton=config))
    return made


def remote_triton(url: str, protocol: str, models: list[str]) -> str:
    """The version of the Triton at ``url``, once it serves every model; else why not, and the fix."""
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module  # type: ignore[no-redef]
    target = f"{protocol}://{url}"
    try:
        server = module.InferenceServerClient(url)
        metadata = server.get_server_metadata(**({"as_json": True} if protocol == "grpc" else {}))
        missing = [name for name in models if not server.is_model_ready(name)]
    except Exception as exc:  # tritonclient's errors differ by protocol: say what it said
        raise SystemExit(f"--triton-url {url}: no Triton answers at {target} ({exc}); give the "
                         f"host:port of its {protocol.upper()} endpoint") from exc
    if missing:
        raise SystemExit(f"--triton-url {url}: models {missing} are not ready there; load each under its "
                         "zoo name (hetsched zoo NAME --out model_repository/NAME/1/model.onnx)")
    return str(metadata.get("version", "?"))


def machine_limit(
    model: onnx.ModelProto, cores: int, batches: tuple[int, ...] = (1, 2, 4, 8)
) -> dict[str, Any]:
    """Rows/s of one single-threaded ONNX Runtime session on one core at its best batch, times the
    cores (the issue's limit); and at that batch with a session on every core at once, which the
    cores' shared caches and memory make lower (what any server of this model can reach here)."""
    per_batch = {batch: _rows_per_s(model, batch, [min(os.sched_getaffinity(0))]) for batch in batches}
    best = max(per_batch, key=per_batch.__getitem__)
    together = _rows_per_s(model, best, sorted(os.sched_getaffinity(0))[:cores])
    return {"rows_per_s_per_core": per_batch, "best_batch": best, "limit_rows_per_s": per_batch[best] * cores,
            "all_cores_rows_per_s": together}


def _rows_per_s(model: onnx.ModelProto, batch: int, cores: list[int], seconds: float = 1.0) -> float:
    """Rows/s of single-threaded sessions, one pinned to each of ``cores``, running side by side."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    feeds = random_feeds(model, batch)
    blob = model.SerializeToString()
    rows = [0] * len(cores)
    start = threading.Barrier(len(cores) + 1)

    def run(index: int) -> None:
        os.sched_setaffinity(0, {cores[index]})  # this thread only
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        start.wait()
        began = time.perf_counter()
        runs = 0
        while time.perf_counter() - began < seconds or runs < 3:
            session.run(None, feeds)
            runs += 1
        rows[index] = batch * runs / (time.perf_counter() - began)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cores))]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    return sum(rows)


def sweep(url: str, name: str, rates: list[float], duration_s: float, min_requests: int) -> list[LoadResult]:
    target = Target(url, name)
    closed_loop(target, 2, min(3.0, duration_s))  # warm-up: sessions, caches, the scheduler's history
    results = []
    for rate in rates:
        seconds = max(duration_s, min_requests / rate)  # a p99 of a dozen requests is their maximum
        result = open_loop(target, rate, seconds, "poisson", drain_s=max(10.0, seconds))
        print(f"    {result.line()}", flush=True)
        results.append(result)
        if result.achieved_rate < 0.5 * rate and rate > rates[0]:  # far past saturation: stop wasting time
            break
    return results


def run_setup(
    setup: ServerSetup, name: str, model_path: Path, rates: list[float], duration_s: float, min_requests: int,
    scratch: Path, protocol: str = "grpc",
) -> list[LoadResult]:
    print(f"  {setup.label}", flush=True)
    if setup.server == "hetsched":
        repository = scratch / f"repo-{len(list(scratch.iterdir()))}"
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "model.onnx").symlink_to(model_path)
        if setup.config_pbtxt:
            (repository / name / "config.pbtxt").write_text(setup.config_pbtxt)
        # its own perf models, calibrated at load: a store shared across setups and rounds let one
        # daemon start from what another had learnt under overload
        with DaemonProcess(repository, perfmodel_dir=scratch / f"perfmodels-{repository.name}") as daemon:
            return sweep(server_url(daemon, protocol), name, rates, duration_s, min_requests)
    if setup.url:
        return sweep(f"{protocol}://{setup.url}", name, rates, duration_s, min_requests)
    from hetsched.tritonserver import TritonServer

    server = TritonServer({name: model_path}, setup.triton, workdir=scratch / f"triton-{time.time_ns()}")
    try:
        return sweep(server_url(server, protocol), name, rates, duration_s, min_requests)
    finally:
        server.stop()


def sustained(results: list[LoadResult]) -> float:
    """The highest arrival rate kept up with: every request answered, no errors, and answers at 95% or
    more of the rate the Poisson schedule really sent (a growing backlog answers later, so slower).
    The rate sent, not the one offered: a schedule's arrivals fall short of or above the offered rate
    (seed 0's first 6 s send about a tenth fewer), and a claim of throughput must be what was served."""
    kept = [
        r.sent_rate
        for r in results
        if not r.errors and r.completed == r.sent and r.achieved_rate >= 0.95 * r.sent_rate
    ]
    return max(kept, default=0.0)


def over_rounds(rounds: list[list[LoadResult]]) -> list[LoadResult]:
    """One result per offered rate from a configuration's sweeps: latencies and the achieved rate
    are the medians over the rounds that reached that rate; counts and errors add up."""
    by_rate: dict[float, list[LoadResult]] = {}
    for sweep_results in rounds:
        for result in sweep_results:
            by_rate.setdefault(result.offered_rate, []).append(result)
    combined = []
    for rate, results in sorted(by_rate.items()):
        errors: dict[str, int] = {}
        for result in results:
            for kind, count in result.errors.items():
                errors[kind] = errors.get(kind, 0) + count
        combined.append(replace(
            results[0], sent=sum(r.sent for r in results), completed=sum(r.completed for r in results),
            schedule_s=sum(r.schedule_s for r in results), errors=errors,
            **{field: statistics.median(getattr(r, field) for r in results)
               for field in ("achieved_rate", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "duration_s",
                             "client_cpu_ms")}))
    return combined


def p99_wins(ours: list[LoadResult], triton: list[list[LoadResult]]) -> tuple[int, int]:
    """At how many of ``ours``'s rates its p99 was at or below every Triton configuration's there
    (``triton``: each configuration's results), and at how many rates both had error-free results."""
    wins = points = 0
    for result in ours:
        rivals = [r.p99_ms for rs in triton for r in rs
                  if r.offered_rate == result.offered_rate and not r.errors]
        if rivals and not result.errors:
            points += 1
            wins += result.p99_ms <= min(rivals)
    return wins, points


def limit_with_client(limit: dict[str, Any], cores: int, runs: dict[str, list[LoadResult]]
                      ) -> dict[str, float]:
    """What the machine's limit leaves a server once the client shares the cores: each request costs
    the server at least cores / limit core-seconds (the limit's best batch, alone on a core) and the
    client its own CPU per answer (the median over the sweep's error-free points, every server)."""
    client_ms = [r.client_cpu_ms for rs in runs.values() for r in rs if not r.errors and r.client_cpu_ms > 0]
    if not client_ms:
        return {}
    per_request_ms = statistics.median(client_ms)
    left = cores / (cores / limit["limit_rows_per_s"] + per_request_ms / 1e3)
    return {"client_cpu_ms": per_request_ms, "limit_with_client_req_per_s": left}


def summarize(model: str, limit: dict[str, Any], rounds: Rounds, cores: int) -> dict[str, Any]:
    runs = {label: over_rounds(sweeps) for label, sweeps in rounds.items()}
    triton = [label for label in runs if label.startswith("triton")]
    ours = [label for label in runs if label.startswith("hetsched")]
    best_triton = max((sustained(runs[label]) for label in triton), default=0.0)
    best_ours = max((sustained(runs[label]) for label in ours), default=0.0)
    wins, points = p99_wins(runs.get("hetsched (default)", []), [runs[label] for label in triton])
    round_wins = round_points = 0  # the same comparison within each round, against that round's Triton
    for index, sweep_results in enumerate(rounds.get("hetsched (default)", [])):
        won, compared = p99_wins(sweep_results, [rounds[label][index] for label in triton])
        round_wins, round_points = round_wins + won, round_points + compared
    return {
        "model": model,
        "limit": limit,
        "rounds": max((len(sweeps) for sweeps in rounds.values()), default=0),
        "sustained_req_per_s": {k: sustained(v) for k, v in runs.items()},
        "best_triton_sustained": best_triton,
        "best_hetsched_sustained": best_ours,
        "hetsched_default_p99_at_or_below_best_triton": f"{wins}/{points}",
        "hetsched_default_p99_at_or_below_best_triton_by_round": f"{round_wins}/{round_points}",
        **limit_with_client(limit, cores, runs),
    }


def plot(model: str, runs: dict[str, list[LoadResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (every, best) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, results in runs.items():
        ok = [r for r in results if not r.errors]
        style = "-o" if label.startswith("hetsched") else "--s"
        every.plot([r.achieved_rate for r in ok], [r.p99_ms for r in ok], style, label=label, markersize=4)
    for server, style in (("hetsched", "-o"), ("triton", "--s")):
        rates = sorted({r.offered_rate for label, rs in runs.items() if label.startswith(server) for r in rs})
        points = []
        for rate in rates:
            candidates = [
                r
                for label, rs in runs.items()
                if label.startswith(server)
                for r in rs
                if r.offered_rate == rate and not r.errors
            ]
            if candidates:
                chosen = min(candidates, key=lambda r: r.p99_ms)
                points.append((chosen.achieved_rate, chosen.p99_ms))
        if points:
            best.plot(*zip(*points), style, label=f"best {server} config at each rate", markersize=4)
    for axis, title in ((every, f"{model}: every configuration"), (best, f"{model}: best of each server")):
        axis.set_xlabel("achieved throughput (req/s)")
        axis.set_ylabel("p99 latency (ms)")
        axis.set_yscale("log")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(summaries: list[dict[str, Any]], rounds: dict[str, Rounds], args: argparse.Namespace) -> str:
    from hetsched.topology import discover_gpus

    gpus = ", ".join(gpu.name for gpu in discover_gpus())
    lines = [
        f"## hetsched vs Triton: {args.models} (bench/compare_triton.py)",
        "",
        f"`PYTHONPATH=. python bench/compare_triton.py --models {args.models} --duration {args.duration} "
        f"--min-requests {args.min_requests} --rounds {args.rounds} --section {args.section}"
        + (f" --setups '{','.join(args.setups)}'" if args.setups else "")
        + (f" --protocol {args.protocol}" if args.protocol != "grpc" else "")
        + (f" --triton-url {args.triton_url}" if args.triton_url else "") + "` on "
        f"{platform.node()} ({os.cpu_count()} cores, {gpus or 'no GPU'}), {date.today().isoformat()}. "
        + (f"Triton {args.triton_version} is the one already running at {args.triton_url}, serving each "
           "model as its own configuration says; " if args.triton_url else
           "Triton 2.51 from `nvidia-pytriton` 0.7.0 runs the same ONNX file through its Python backend "
           "with ONNX Runtime (its ONNX Runtime backend is not on PyPI); ")
        + "hetsched is `hetsched serve`, with its defaults or as a label "
        "says (b1: `max_batch_size: 0`; 2x1: two one-core groups, no wide worker), a fresh daemon with fresh "
        "perf models (calibrated at load) per sweep. Same client "
        f"(`tritonclient` {'HTTP' if args.protocol == 'http' else 'gRPC'}), open-loop Poisson arrivals, "
        "batch-1 requests, "
        f"{args.duration:g} s per point and at least {args.min_requests} requests; client and server share "
        "the machine's cores."
        + (f" {args.rounds} rounds, the configurations interleaved in each; cells are medians over the "
           "rounds, p99's range in brackets." if args.rounds > 1 else ""),
        "",
    ]
    for summary in summaries:
        model = summary["model"]
        limit = summary["limit"]
        lines += [
            f"### {model}",
            "",
            f"Machine limit: {limit['limit_rows_per_s']:.0f} rows/s (one ORT thread per core at batch "
            f"{limit['best_batch']}, each timed alone; {limit['all_cores_rows_per_s']:.0f} rows/s with "
            "every core running one at once)"
            + (f"; with this client's {summary['client_cpu_ms']:.1f} ms of CPU per request on the same "
               f"cores, {summary['limit_with_client_req_per_s']:.0f} req/s are left for a server on them"
               if "limit_with_client_req_per_s" in summary else "")
            + ". Sustained (the highest rate the schedule really sent that was answered in full, at "
            "≥95% of it, without errors): hetsched best "
            f"{summary['best_hetsched_sustained']:.0f} req/s, Triton best "
            f"{summary['best_triton_sustained']:.0f} req/s"
            + (f" ({summary['best_hetsched_sustained'] / summary['limit_with_client_req_per_s']:.0%}"
               + ("" if args.triton_url else
                  f" and {summary['best_triton_sustained'] / summary['limit_with_client_req_per_s']:.0%}")
               + " of what is left, among the rates offered)"
               if "limit_with_client_req_per_s" in summary else "")
            + ("" if summary["hetsched_default_p99_at_or_below_best_triton"] == "0/0" else
               f"; hetsched's default p99 at or below the best Triton p99 at "
               f"{summary['hetsched_default_p99_at_or_below_best_triton']} offered rates"
               + ("" if summary["rounds"] < 2 else
                  f" (round by round: {summary['hetsched_default_p99_at_or_below_best_triton_by_round']} "
                  "rates x rounds)"))
            + f". Plot: `bench/results/{args.section}_{model}.png`.",
            "",
        ]
        model_rounds = rounds[model]
        model_runs = {label: over_rounds(sweeps) for label, sweeps in model_rounds.items()}
        rates = sorted({r.offered_rate for rs in model_runs.values() for r in rs})
        lines.append("| offered req/s | " + " | ".join(model_runs) + " |")
        lines.append("|---:|" + "---:|" * len(model_runs))
        for rate in rates:
            cells = []
            for label, results in model_runs.items():
                found = next((r for r in results if r.offered_rate == rate), None)
                if found is None:
                    cells.append("")
                    continue
                mark = f" ({sum(found.errors.values())} err)" if found.errors else ""
                p99s = [r.p99_ms for rs in model_rounds[label] for r in rs if r.offered_rate == rate]
                spread = f" [{min(p99s):.0f}–{max(p99s):.0f}]" if len(p99s) > 1 else ""
                cells.append(f"{found.achieved_rate:.0f} req/s, p99 {found.p99_ms:.1f}{spread} ms{mark}")
            lines.append(f"| {rate:.0f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="googlenet,resnet50,vit-tiny")
    parser.add_argument("--section", default="compare_triton",
                        help="names the JSON in bench/results and the RESULTS.md section, so a run on other "
                        "models (say --models yolov8n --section compare_triton_detector) keeps this one")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per load point (default 6)")
    parser.add_argument("--min-requests", type=int, default=100,
                        help="requests per load point at least: low rates run longer (default 100)")
    parser.add_argument(
        "--fractions",
        default=",".join(map(str, FRACTIONS)),
        help="offered rates as fractions of the machine limit",
    )
    parser.add_argument("--rounds", type=int, default=1,
                        help="sweeps of every configuration, interleaved; cells are medians (default 1)")
    parser.add_argument("--setups", type=lambda text: text.split(","), default=[],
                        help="only these configurations, by label (e.g. 'hetsched b1,triton 2x1t'; "
                        "default: all)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                        help="tritonclient's, against every server (default grpc)")
    parser.add_argument("--triton-url", default="",
                        help="host:port of an already-running Triton to measure instead of local ones")
    args = parser.parse_args()
    from hetsched.tritonserver import triton_available

    if args.triton_url:
        args.triton_version = remote_triton(args.triton_url, args.protocol, args.models.split(","))
    else:
        missing = triton_available()
        if missing:
            print(f"Triton is not available here: {missing}; install the bench extra: pip install '.[bench]'")
            return 2
    cores = len(os.sched_getaffinity(0))
    fractions = [float(f) for f in args.fractions.split(",")]
    every = setups(cores, args.triton_url)
    unknown = sorted(set(args.setups) - {s.label for s in every})
    if unknown:
        print(f"unknown configurations {unknown}; the labels are {[s.label for s in every]}")
        return 2
    chosen = [s for s in every if not args.setups or s.label in args.setups]
    summaries: list[dict[str, Any]] = []
    all_rounds: dict[str, Rounds] = {}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for name in args.models.split(","):
            model = zoo.build(name)
            model_path = scratch / f"{name}.onnx"
            onnx.save_model(model, str(model_path))
            limit = machine_limit(model, cores)
            rates = [max(1.0, round(f * limit["limit_rows_per_s"], 1)) for f in fractions]
            print(f"{name}: machine limit {limit['limit_rows_per_s']:.0f} rows/s; rates {rates}", flush=True)
            rounds: Rounds = {s.label: [] for s in chosen}
            for index in range(args.rounds):
                if args.rounds > 1:
                    print(f" round {index + 1}/{args.rounds}", flush=True)
                for setup in chosen:
                    rounds[setup.label].append(
                        run_setup(setup, name, model_path, rates, args.duration, args.min_requests, scratch,
                                  args.protocol))
            all_rounds[name] = rounds
            summaries.append(summarize(name, limit, rounds, cores))
            (HERE / "results").mkdir(exist_ok=True)
            plot(name, {label: over_rounds(sweeps) for label, sweeps in rounds.items()},
                 HERE / "results" / f"{args.section}_{name}.png")
    document = {
        "summaries": summaries,
        "rounds": {
            m: {label: [[asdict(r) for r in sweep_results] for sweep_results in sweeps]
                for label, sweeps in rounds.items()}
            for m, rounds in all_rounds.items()
        },
    }
    (HERE / "results" / f"{args.section}.json").write_text(
        json.dumps(document, indent=2, default=_jsonable) + "\n"
    )
    text = report(summaries, all_rounds, args)
    print(text)
    write_section(text, HERE / "RESULTS.md", args.section)
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"{type(value)} is not JSON serializable")


if __name__ == "__main__":
    sys.exit(main())
