"""vae-serve's start-up: with several workers, Prometheus' multiprocess directory is fresh, set
before uvicorn starts the workers, and removed when the server stops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import uvicorn

from service import cli


@pytest.fixture
def started(monkeypatch, tmp_path):
    """main() with uvicorn.run replaced by a recorder of the environment the workers would inherit."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # tempfile caches TMPDIR on first use
    for name in ("VAE_WORKERS", cli.MULTIPROCESS_DIR, cli.MULTIPROCESS_DIR.lower()):
        monkeypatch.setenv(name, "")  # main() writes these into os.environ: undone after the test
        monkeypatch.delenv(name)
    seen: dict = {}

    def run(*args, **kwargs):
        directory = os.environ.get(cli.MULTIPROCESS_DIR)
        seen.update(kwargs, directory=directory, existed=directory is not None and Path(directory).is_dir())

    monkeypatch.setattr(uvicorn, "run", run)
    return seen


def test_two_workers_get_a_fresh_multiprocess_directory_removed_at_the_end(started, monkeypatch, tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    monkeypatch.setenv(cli.MULTIPROCESS_DIR, str(stale))  # an earlier run's counts must not be added
    assert cli.main(["--workers", "2"]) == 0
    directory = Path(started["directory"])
    assert started["existed"] and directory.parent == tmp_path and directory != stale
    assert started["workers"] == 2 and started["timeout_graceful_shutdown"] == cli.GRACEFUL_SHUTDOWN_S
    assert not directory.exists() and stale.exists()


def test_one_worker_keeps_its_metrics_in_memory(started, monkeypatch, tmp_path):
    monkeypatch.setenv(cli.MULTIPROCESS_DIR.lower(), str(tmp_path))  # prometheus_client's old spelling
    monkeypatch.setenv(cli.MULTIPROCESS_DIR, str(tmp_path))
    assert cli.main(["--workers", "1"]) == 0
    assert started["directory"] is None and started["workers"] == 1
    assert cli.MULTIPROCESS_DIR.lower() not in os.environ


@pytest.mark.parametrize(
    ("host", "said"),
    [
        (
            "0.0.0.0",
            "listening on every interface, port 8000: from this machine the explorer is http://localhost:8000/",
        ),
        ("::", "listening on every interface, port 8000"),
        ("127.0.0.1", "listening on 127.0.0.1 only, port 8000: the explorer is http://127.0.0.1:8000/"),
        ("::1", "listening on ::1 only, port 8000: the explorer is http://[::1]:8000/"),
    ],
)
def test_the_banner_says_where_the_server_listens(host, said):
    from service.cli import listening_banner

    assert listening_banner(host, 8000).startswith(said)


def test_by_default_one_worker_per_cpu_available_and_the_log_says_so(started, monkeypatch, capsys):
    from service import settings

    monkeypatch.setattr(settings, "available_cpus", lambda: 3)
    assert cli.main([]) == 0
    assert started["workers"] == 3 and started["directory"] is not None  # several: multiprocess metrics
    assert "vae-serve: 3 worker processes, one per CPU available (VAE_WORKERS=0" in capsys.readouterr().err


def test_a_chosen_worker_count_is_said_as_chosen(started, capsys):
    assert cli.main(["--workers", "1"]) == 0
    assert "vae-serve: 1 worker process (VAE_WORKERS=1)" in capsys.readouterr().err


def test_with_the_control_routes_on_the_default_is_one_worker(started, monkeypatch, capsys):
    from service import settings

    monkeypatch.setattr(settings, "available_cpus", lambda: 3)
    monkeypatch.setenv("VAE_ADMIN_TOKEN", "secret")
    assert cli.main([]) == 0
    assert started["workers"] == 1 and "the repository control routes are on" in capsys.readouterr().err
