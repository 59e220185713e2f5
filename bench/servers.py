"""Start the servers under test on free ports, all with uvicorn's standard extras (uvloop, httptools)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, kind: str, model_dir: Path, workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.kind, self.port = kind, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "VAE_MODEL_DIR": str(model_dir), "VAE_PORT": str(self.port),
                       "VAE_HOST": "127.0.0.1", "VAE_WORKERS": str(workers), "VAE_MAX_IN_FLIGHT": "1024",
                       **(env or {})}
        if kind == "product":
            command = [sys.executable, "-m", "service.cli"]
        else:
            command = [sys.executable, "-m", "uvicorn", f"bench.apps.{kind}:app", "--host", "127.0.0.1",
                       "--port", str(self.port), "--workers", str(workers), "--log-level", "warning",
                       "--no-access-log"]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from process start to the first 200 on the readiness path."""
        path = "/readyz" if self.kind == "product" else "/docs"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + path, timeout=0.5).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.005)
        raise TimeoutError(f"{self.kind} not ready after {timeout}s")

    def rss_mb(self) -> list[float]:
        """Resident memory of each serving process (the workers, or the single process)."""
        pids = [self.process.pid, *_children(self.process.pid)]
        worker_pids = pids[1:] if len(pids) > 1 else pids
        values = []
        for pid in worker_pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        values.append(int(line.split()[1]) / 1024)
            except OSError:
                pass
        return values

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split(") ")[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found
