"""Start ``python -m seer serve ...`` as a real subprocess on a free 127.0.0.1 port.

``ServerProcess.start(model, *flags)`` waits until ``/health`` is 200 (or the process dies,
whose log is then shown); ``stop()`` sends SIGTERM and returns the exit code. The server's
output goes to a log file, never to a pipe that could fill up and stall it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

import httpx


def seer_dtype_flags(flags=()) -> list[str]:
    """``--dtype`` for a seer subprocess when the suite runs with SEER_TEST_DTYPE (see conftest)."""
    dtype = os.environ.get("SEER_TEST_DTYPE")
    return ["--dtype", dtype] if dtype and "--dtype" not in flags else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: str):
        self.proc, self.port, self.log_path = proc, port, log_path
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, model: Optional[str], *flags: str, timeout: float = 60.0) -> "ServerProcess":
        port = free_port()
        fd, log_path = tempfile.mkstemp(prefix="seer-serve-", suffix=".log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        model_arg = [model] if model else []  # none: seer's demo model
        proc = subprocess.Popen([sys.executable, "-m", "seer", "serve", *model_arg, "--server-name", "127.0.0.1",
                                 "--server-port", str(port), *seer_dtype_flags(flags), *flags],
                                stdout=fd, stderr=subprocess.STDOUT, env=env)
        os.close(fd)
        server = cls(proc, port, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{server.log()}")
            try:
                if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        server.kill()
        raise RuntimeError(f"the server was not healthy within {timeout}s:\n{server.log()}")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def metrics(self) -> dict[str, float]:
        """The unlabelled samples of /metrics, by name."""
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
