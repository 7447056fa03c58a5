"""The ``hetsched`` command: one entry point, one sub-command per job (see DESIGN.md for the contracts).

Bad input ends with one line naming the problem and the fix, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hetsched.errors import HetschedError, UsageError
from hetsched.progress import ProgressBar

EXIT_USAGE = 2
log = logging.getLogger("hetsched")


def _cmd_demo(args: argparse.Namespace) -> int:
    from hetsched.demo import format_report, run_demo

    report = run_demo(args.model, args.ratios, args.batch, args.out, args.seconds, not args.no_triton,
                      progress=ProgressBar)
    print(format_report(report))
    return 0 if report.max_abs_diff <= 1e-4 else 1


def _cmd_zoo(args: argparse.Namespace) -> int:
    from hetsched import zoo

    if args.list or not args.name:
        for name in zoo.NAMES:
            print(f"{name:18} {zoo.describe(name)}")
        return 0
    if not args.out:
        raise UsageError("zoo needs --out FILE to write the model to, e.g. --out resnet18.onnx")
    model = zoo.build(args.name, batch=args.batch)
    _save_model(model, Path(args.out))
    print(f"wrote {args.out} ({args.name}, {len(model.graph.node)} nodes)")
    return 0


def _save_model(model: object, path: Path) -> None:
    import onnx

    assert isinstance(model, onnx.ModelProto)
    path.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > (1 << 30)
    onnx.save_model(model, str(path), save_as_external_data=large, location=f"{path.name}.data")


def _cmd_profile(args: argparse.Namespace) -> int:
    from partitioner.graph import build_graph
    from perfmodels.profile import profile

    graph = build_graph(args.model, batch=args.batch, dims=dict(args.dim))
    bar = ProgressBar(f"profile ({args.method})")
    costs = profile(graph, args.method, threads=args.threads, progress=bar)
    costs.save(args.out)
    total_ms = sum(costs.seconds.values()) * 1e3
    print(
        f"wrote {args.out}: {len(costs.seconds)} nodes, method {costs.method}, arch {costs.arch}; "
        f"sum of nodes {total_ms:.2f} ms, whole model {costs.whole_model_s * 1e3:.2f} ms"
    )
    return 0


def _cmd_partition(args: argparse.Namespace) -> int:
    from partitioner.graph import build_graph
    from partitioner.partition import parse_ratios, partition

    parse_ratios(args.ratios)  # reject bad ratios before the (slower) model work
    graph = build_graph(args.model, batch=args.batch, dims=dict(args.dim))
    if args.costs:
        from perfmodels.profile import NodeCosts

        costs = NodeCosts.load(args.costs)
        if costs.model_sha256 != graph.source_sha256:
            raise UsageError(
                f"{args.costs} was measured on another model; profile this one: "
                f"`hetsched profile {args.model} --out {args.costs}`"
            )
        graph = graph.with_costs(costs.seconds, costs.arch, costs.method)
    else:
        log.info("no --costs: node weights are FLOP estimates; `hetsched profile` measures real ones")
    source = str(Path(args.model).resolve())  # predict and calibrate profile it again later
    result = partition(graph, args.ratios, method=args.method, seed=args.seed, source_label=source)
    plan_path = result.save(args.out)
    plan = result.plan
    print(f"wrote {plan_path} and {len(plan.parts)} part models ({plan.method}, costs: {plan.cost_source})")
    for part in plan.parts:
        print(f"  part {part.index}: {len(part.nodes):4} nodes, share {part.cost_share:6.1%} "
              f"(asked {part.target_share:.1%}), depends on {part.depends_on or 'inputs only'}")
    quality = plan.quality
    if "metis_cut_bytes" in quality:
        cyclic = "acyclic" if quality["metis_acyclic"] else "cyclic"
        print(f"  METIS alone: cut {quality['metis_cut_bytes']} bytes, imbalance "
              f"{quality['metis_imbalance']:.2%}, {cyclic}; after repair: cut {quality['cut_bytes']} bytes, "
              f"imbalance {quality['imbalance']:.2%}, acyclic ({quality['repair_moved_nodes']} nodes moved)")
    else:
        print(f"  cut {quality['cut_bytes']} bytes, imbalance {quality['imbalance']:.2%}")
    for note in plan.notes:
        print(f"  note: {note}")
    return 0


def _plan_dir(target: str, scratch: Path) -> Path:
    """A plan directory as given, or a one-part plan of a model file (the model unpartitioned)."""
    path = Path(target)
    if path.is_dir():
        return path
    from partitioner.graph import build_graph
    from partitioner.partition import partition

    partition(build_graph(path), [1.0], source_label=str(path.resolve())).save(scratch)
    return scratch


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import tempfile

    from hetsched.calibrate import calibrate, ensure_bus_model
    from perfmodels.store import PerfModelStore

    store = PerfModelStore()
    bus, fresh = ensure_bus_model(store, ProgressBar("bus calibration"))
    for stats in bus.statistics().links:
        state = "calibrated now" if fresh else "from the store"
        print(f"bus {stats.src} -> {stats.dst} ({stats.kind}): {stats.latency_s * 1e6:.2f} us + bytes / "
              f"{stats.bandwidth_bytes_per_s / 1e9:.2f} GB/s ({state})")
    with tempfile.TemporaryDirectory(prefix="hetsched-calibrate-") as scratch:
        directory = _plan_dir(args.target, Path(scratch))
        report = calibrate(directory, args.batches, args.threads, store, progress=ProgressBar)
    print(f"calibrated {len({k[0] for k in report.measured_s})} part(s) into {store.directory}")
    print(f"{'part':>4}  {'arch':8} {'batch':>5}  {'median ms':>10}")
    for (index, arch, batch), seconds in sorted(report.measured_s.items()):
        print(f"{index:>4}  {arch:8} {batch:>5}  {seconds * 1e3:>10.3f}")
    for arch, model in sorted(report.composition.items()):
        print(f"composition {arch}: t = {model.alpha:.3f} * share x whole + {model.c0_s * 1e6:.1f} us "
              f"* nodes + {model.c1_s * 1e6:.1f} us * (1 - share)  ({model.samples} parts, "
              f"rel. RMSE {model.rel_rmse:.1%})")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from hetsched.predict import predict_plan
    from perfmodels.store import PerfModelStore

    prediction = predict_plan(args.directory, args.batch, args.threads, PerfModelStore())
    if args.json:
        print(json.dumps(prediction.to_json_dict()))
        return 0
    print(f"batch {prediction.batch} on {prediction.arch}")
    for part in prediction.parts:
        print(f"  part {part.index} ({part.file}): {part.ms:.3f} ms  [{part.source}]")
    print(f"  total {prediction.total_ms:.3f} ms (parts one after another)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from hetsched.daemon.server import ServeOptions, serve

    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)  # a daemon reports its work
    return serve(ServeOptions(
        model_repository=args.model_repository, host=args.host, http_port=args.http_port,
        grpc_port=args.grpc_port, metrics_port=args.metrics_port, workers=args.workers, policy=args.policy,
        perfmodel_dir=args.perfmodel_dir, max_body_bytes=args.max_body_bytes, admin_header=args.admin_header,
        dask_scheduler=args.dask_scheduler, trace_file=args.trace_file, gpu_streams=args.gpu_streams,
        accelerators=tuple(args.accelerator), numa_copies=args.numa_copies))


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="the daemon: Triton's KServe v2 protocol over HTTP and gRPC")
    serve.add_argument("--model-repository", required=True, metavar="DIR",
                       help="Triton model repository: DIR/<model>/<version>/model.onnx "
                       "[+ DIR/<model>/config.pbtxt]")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--http-port", type=_port, default=8000, help="0: any free port (logged)")
    serve.add_argument("--grpc-port", type=_port, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics; -1: none")
    serve.add_argument("--workers", default="auto",
                       help="core groups: auto, numa, socket, NxK or core lists like 0-1;2,3 (default auto)")
    serve.add_argument("--policy", default="dmda", help="scheduling policy (default dmda)")
    serve.add_argument("--gpu-streams", type=_count, default=2,
                       help="workers (CUDA streams) per GPU found, beside the core groups (default 2; "
                       "0: no GPU); GPUs need onnxruntime-gpu")
    serve.add_argument("--accelerator", type=_provider, action="append", default=[],
                       metavar="PROVIDER[:KEY=VALUE,...]",
                       help="one more worker whose sessions use this ONNX Runtime execution provider, "
                       "with these options (e.g. VitisAIExecutionProvider:config_file=vaip_config.json); "
                       "repeatable")
    serve.add_argument("--numa-copies", action="store_true",
                       help="on a machine of several NUMA nodes, copy each task's inputs to its worker's "
                       "node while the worker is busy (not measured on such a machine yet)")
    serve.add_argument("--perfmodel-dir", default=None,
                       help="perf-model store (default $HETSCHED_PERFMODEL_DIR or the user cache)")
    serve.add_argument("--max-body-bytes", type=_positive_int, default=1 << 30,
                       help="largest request body or gRPC message (default 1 GiB); larger: HTTP 413")
    serve.add_argument("--admin-header", metavar="NAME=VALUE", default=None,
                       help="require this header on model load and unload requests")
    serve.add_argument("--dask-scheduler", metavar="ADDRESS", default=None,
                       help="run the models on this Dask cluster's workers (e.g. tcp://host:8786) instead "
                       "of this machine's cores; needs hetsched installed on every worker")
    serve.add_argument("--trace-file", metavar="FILE", default=None,
                       help="record every task (worker, start, end) and request; write a Chrome trace "
                       "(opens in Perfetto) there on stop")
    serve.set_defaults(run=_cmd_serve)


def _port(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0: any free port)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hetsched", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="build, profile, partition and run a zoo model; check the answer")
    demo.add_argument("--model", default="googlenet", help="zoo model name (default googlenet)")
    demo.add_argument("--ratios", default="0.8,0.2")
    demo.add_argument("--batch", type=_positive_int, default=1)
    demo.add_argument("--out", help="directory for the plan and parts (default: a temporary one)")
    demo.add_argument("--seconds", type=float, default=5.0,
                      help="load per server: half of it one request at a time, then all of it loaded")
    demo.add_argument("--no-triton", action="store_true", help="skip Triton even when it is installed")
    demo.set_defaults(run=_cmd_demo)

    zoo = sub.add_parser("zoo", help="write a zoo model (standard architecture, random weights)")
    zoo.add_argument("name", nargs="?", help="model name; omit or --list to see them")
    zoo.add_argument("--out", help="ONNX file to write")
    zoo.add_argument("--batch", type=_positive_int, help="fix the batch dimension (default: dynamic)")
    zoo.add_argument("--list", action="store_true", help="list the models")
    zoo.set_defaults(run=_cmd_zoo)

    _add_profile(sub)
    _add_partition(sub)
    _add_perfmodel_commands(sub)
    _add_serve(sub)
    return parser


def _add_perfmodel_commands(sub: argparse._SubParsersAction) -> None:
    calibrate = sub.add_parser("calibrate", help="time each part on each processor kind until trusted")
    calibrate.add_argument("target", metavar="DIR_OR_MODEL", help="plan directory, or a model file (whole)")
    calibrate.add_argument("--batches", type=_int_list, default=[1, 2, 4, 8, 16, 32],
                           help="batch sizes (default 1,2,4,8,16,32)")
    calibrate.add_argument("--threads", type=_int_list, default=None,
                           help="CPU core-group sizes, e.g. 1,2 (default: 1 and all cores)")
    calibrate.set_defaults(run=_cmd_calibrate)

    predict = sub.add_parser("predict", help="predicted ms per part, and the source of each number")
    predict.add_argument("directory", help="plan directory")
    predict.add_argument("--batch", type=_positive_int, default=1)
    predict.add_argument("--threads", type=_positive_int, default=1)
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.set_defaults(run=_cmd_predict)


def _int_list(text: str) -> list[int]:
    values = [_positive_int(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} lists no sizes; write them like 1,2,4")
    return values


def _add_profile(sub: argparse._SubParsersAction) -> None:
    from perfmodels.profile import DEFAULT_METHOD, METHODS

    profile = sub.add_parser("profile", help="measure each node's CPU time with ONNX Runtime")
    profile.add_argument("model", help="ONNX model file")
    profile.add_argument("--out", required=True, help="costs JSON to write")
    profile.add_argument("--batch", type=_positive_int, default=1)
    _add_dim(profile)
    profile.add_argument("--threads", type=_positive_int, default=1, help="intra-op threads (default 1)")
    profile.add_argument("--method", choices=sorted(METHODS), default=DEFAULT_METHOD,
                         help=f"default {DEFAULT_METHOD}: "
                         + "; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    profile.set_defaults(run=_cmd_profile)


def _add_partition(sub: argparse._SubParsersAction) -> None:
    from partitioner.partition import METHODS

    part = sub.add_parser("partition", help="split a model into load-balanced parts")
    part.add_argument("model", help="ONNX model file")
    part.add_argument("--ratios", required=True, help="share of the cost per part, e.g. 0.8,0.2")
    part.add_argument("--out", required=True, help="directory for plan.json and part_<i>.onnx")
    part.add_argument("--costs", help="node costs from `hetsched profile` (default: FLOP estimates)")
    part.add_argument("--batch", type=_positive_int, default=1, help="batch size for tensor bytes")
    _add_dim(part)
    part.add_argument("--method", choices=list(METHODS), default="metis",
                      help="; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    part.add_argument("--seed", type=int, default=0, help="METIS seed (same input, same plan)")
    part.set_defaults(run=_cmd_partition)


def _add_dim(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dim", type=_dim, action="append", default=[], metavar="NAME=SIZE",
                        help="size of a symbolic input dimension other than the batch, e.g. seq=128")


def _dim(text: str) -> tuple[str, int]:
    name, _, size = text.partition("=")
    if not name or not size.isdigit() or int(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=SIZE with a positive size, e.g. seq=128")
    return name, int(size)


def _positive_int(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be at least {least}")
    return value


def _provider(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(
                f"{text!r}: options go as KEY=VALUE after the provider, comma-separated "
                "(e.g. VitisAIExecutionProvider:config_file=x.json)")
        options[key] = value
    return name, options


def _count(text: str) -> int:
    return _positive_int(text, least=0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hetsched`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "threads", "") is None:  # calibrate's default: one core, and every core
        args.threads = sorted({1, os.cpu_count() or 1})
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except UsageError as exc:
        print(f"hetsched: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HetschedError as exc:
        print(f"hetsched: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
