"""``hetsched serve``: HTTP, gRPC and metrics listeners on one event loop, over one InferenceService.

Start-up: the listeners open first (live at once, ``ready`` false), then every
model of the repository loads in a thread; the server is ready when they are
done (a model that fails to load is UNAVAILABLE with its reason, the others
serve).  SIGTERM or SIGINT: stop accepting (listeners closed, new calls
refused), let the requests in flight finish, stop the workers, save the perf
history, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from hetsched.daemon import grpc_frontend, http_frontend, metrics
from hetsched.daemon.access import AdminSecret
from hetsched.daemon.repository import ModelRepository
from hetsched.daemon.service import InferenceService
from perfmodels.store import default_dir

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServeOptions:
    model_repository: str
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002  # -1: no metrics listener
    workers: str = "auto"
    policy: str = "dmda"
    perfmodel_dir: str | None = None
    max_body_bytes: int = 1 << 30
    admin_header: str | None = None
    dask_scheduler: str | None = None  # serve on this Dask cluster's workers instead of local cores
    trace_file: str | None = None  # write every task's trace there (Chrome JSON) when stopping
    gpu_streams: int = 2  # workers per GPU found (0: none)
    accelerators: tuple[tuple[str, dict[str, str]], ...] = ()  # execution providers, one worker each
    numa_copies: bool = False  # copy tasks' inputs to their workers' NUMA nodes (Runtime's numa_copies)


def serve(options: ServeOptions) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit code."""
    return asyncio.run(_serve(options))


async def _serve(options: ServeOptions) -> int:
    from hetsched import __version__

    admin = AdminSecret.parse(options.admin_header)
    service = InferenceService(
        ModelRepository(options.model_repository),
        options.workers,
        options.policy,
        options.perfmodel_dir or str(default_dir()),
        cluster=options.dask_scheduler,
        trace_file=options.trace_file,
        gpu_streams=options.gpu_streams,
        accelerators=options.accelerators,
        numa_copies=options.numa_copies,
    )  # the history persists
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    http_runner = web.AppRunner(
        http_frontend.build_app(service, __version__, options.max_body_bytes, admin),
        access_log=None,
        shutdown_timeout=DRAIN_TIMEOUT_S,
    )
    await http_runner.setup()
    http_site = web.TCPSite(http_runner, options.host, options.http_port, shutdown_timeout=DRAIN_TIMEOUT_S)
    await http_site.start()
    grpc_server = grpc_frontend.build_server(service, __version__, options.max_body_bytes, admin)
    grpc_port = grpc_server.add_insecure_port(f"{options.host}:{options.grpc_port}")
    grpc_server.start()
    metrics_runner = None
    ports = [f"HTTP {options.host}:{_port(http_runner)}", f"gRPC {options.host}:{grpc_port}"]
    if options.metrics_port >= 0:
        metrics_runner = web.AppRunner(metrics.build_app(service), access_log=None)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, options.host, options.metrics_port).start()
        ports.append(f"metrics {options.host}:{_port(metrics_runner)}")
    log.info("listening: %s", ", ".join(ports))

    loading = loop.run_in_executor(None, service.load_repository)
    await stop.wait()
    log.info("stopping: no new requests; finishing the %d in flight", service.pending())
    # both refuse new calls at once, then wait for those running
    grpc_stopped = grpc_server.stop(DRAIN_TIMEOUT_S)
    await http_runner.cleanup()
    await loop.run_in_executor(None, grpc_stopped.wait)
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    await loading
    await loop.run_in_executor(None, service.close)
    log.info("stopped")
    return 0


def _port(runner: web.AppRunner) -> int:
    """The port a site listens on (the one the OS chose when asked for port 0)."""
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("the listener has no address")
