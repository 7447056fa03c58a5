"""`hetsched serve` as a child process on free ports: what the integration tests and the benches start.

The daemon logs ``listening: HTTP host:port, gRPC host:port, metrics host:port``
once its listeners are open and ``ready: ...`` once its repository is loaded; a
reader thread follows its log, so callers wait on events, never on sleeps or
port polling.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

START_TIMEOUT_S = 300.0
_LISTENING = re.compile(r"listening: HTTP ([\d.]+):(\d+), gRPC [\d.]+:(\d+)(?:, metrics [\d.]+:(\d+))?")
_READY = "hetsched.daemon.service: ready:"


class DaemonProcess:
    """``hetsched serve`` on ``repository``; ``http``, ``grpc`` and ``metrics`` are ``host:port`` strings.

    ``perfmodel_dir`` (when given) is its perf-model store; ``args`` are more
    ``hetsched serve`` options; ``source`` (when given) is a source tree of another version
    (a checkout, say) whose hetsched runs instead of this one (bench/versions.py compares two
    that way).  The constructor returns once the daemon is ready.
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *args: str,
        perfmodel_dir: str | os.PathLike[str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if perfmodel_dir is not None:
            env["HETSCHED_PERFMODEL_DIR"] = str(Path(perfmodel_dir).resolve())
        if source is not None:  # `-m` puts the working directory first on sys.path: run from there
            env["PYTHONPATH"] = os.pathsep.join([str(Path(source).resolve()), env.get("PYTHONPATH", "")])
        command = [
            sys.executable,
            "-m",
            "hetsched",
            "serve",
            "--model-repository",
            str(Path(repository).resolve()),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            *args,
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
            cwd=None if source is None else Path(source).resolve(),
        )
        self.log: list[str] = []
        self.http = self.grpc = self.metrics = ""
        self.exited = threading.Event()
        self._woken = threading.Event()  # set by "ready" or by the process exiting
        self._ready = False
        threading.Thread(target=self._follow, name="hetsched-daemon-log", daemon=True).start()
        self._woken.wait(start_timeout_s)
        if not self._ready:
            self.stop(signal.SIGKILL)
            tail = "".join(self.log[-40:])
            raise RuntimeError(f"the daemon did not become ready; the end of its log:\n{tail}")

    def _follow(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            found = _LISTENING.search(line)
            if found:
                host = found.group(1)
                self.http, self.grpc = f"{host}:{found.group(2)}", f"{host}:{found.group(3)}"
                self.metrics = f"{host}:{found.group(4)}" if found.group(4) else ""
            if _READY in line:
                self._ready = True
                self._woken.set()
        self.process.stderr.close()
        self.exited.set()
        self._woken.set()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        """Signal the daemon (SIGTERM: drain and exit) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self.exited.wait(10)
        return code

    def text(self) -> str:
        """Its log so far."""
        return "".join(self.log)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
