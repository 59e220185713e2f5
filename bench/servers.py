"""Start the servers under test on free ports, all with uvicorn's standard extras (uvloop, httptools)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServerSpec:
    """One server under test: the app (product, or one of bench/apps), its workers and extra env."""

    kind: str  # "product" or a module name in bench/apps
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(
        self,
        kind: str,
        model_dir: Path | None,
        workers: int = 1,
        env: dict[str, str] | None = None,
        tree: Path = REPO,
        cpus: str | None = None,
    ) -> None:
        """`model_dir` None: the product serves what `env` names (VAE_MODEL_REPOSITORY). `tree`: the
        directory whose code it runs (a git worktree of another commit, say); `cpus`: pinned to those
        (taskset's list) when given."""
        self.kind, self.workers, self.port = kind, workers, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The in-flight limit is raised so that c=64 measures throughput, not the limit's 429s.
        source = {"VAE_MODEL_DIR": str(model_dir)} if model_dir is not None else {}
        environment = {
            **os.environ,
            **source,
            "VAE_PORT": str(self.port),
            "VAE_HOST": "127.0.0.1",
            "VAE_WORKERS": str(workers),
            "VAE_MAX_IN_FLIGHT": "1024",
            **(env or {}),
        }
        if kind == "product":
            command = [sys.executable, "-m", "service.cli"]
        else:
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                f"bench.apps.{kind}:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            cwd=tree,  # `python -m` puts the working directory first on the path: its code is what runs
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @classmethod
    def from_spec(cls, spec: ServerSpec, model_dir: Path) -> Server:
        return cls(spec.kind, model_dir, spec.workers, spec.env)

    @property
    def ready_path(self) -> str:
        return "/readyz" if self.kind == "product" else "/docs"

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from process start to the first 200 on the readiness path, and (with several
        workers) until every worker process exists."""
        deadline = time.monotonic() + timeout
        seconds = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode} before it was ready")
            if seconds is None:
                try:
                    if httpx.get(self.url + self.ready_path, timeout=0.5).status_code == 200:
                        seconds = time.perf_counter() - self.started
                except httpx.TransportError:
                    pass
            if seconds is not None and len(self.worker_pids()) >= self.workers:
                return seconds
            time.sleep(0.005)
        raise TimeoutError(f"{self.kind} ({self.workers} workers) not ready after {timeout}s")

    def worker_pids(self) -> list[int]:
        """The processes that serve: the single process, or with several workers uvicorn's worker
        children (not multiprocessing's resource tracker, a child too)."""
        if self.workers == 1:
            return [self.process.pid]
        return [pid for pid in _children(self.process.pid) if "resource_tracker" not in _cmdline(pid)]

    def rss_mb(self) -> list[float]:
        """Resident memory of each serving process."""
        values = []
        for pid in self.worker_pids():
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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
