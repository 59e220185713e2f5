import os
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_settings


def test_settings_come_from_vae_environment_variables(monkeypatch):
    monkeypatch.setenv("VAE_MAX_BATCH", "12")
    monkeypatch.setenv("VAE_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("VAE_CORS_ORIGINS", '["https://a.example"]')
    settings = load_settings()
    assert settings.max_batch == 12 and settings.log_level == "warning"
    assert settings.cors_origins == ["https://a.example"]


def test_invalid_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("VAE_MAX_BATCH", "0")
    monkeypatch.setenv("VAE_WORKERS", "many")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "VAE_MAX_BATCH" in str(info.value) and "VAE_WORKERS" in str(info.value)


def test_vae_serve_refuses_invalid_settings_readably(monkeypatch, capsys):
    from service.cli import main

    monkeypatch.setenv("VAE_PORT", "70000")
    assert main([]) == 2
    assert "VAE_PORT" in capsys.readouterr().err


def test_a_misspelt_variable_is_named_with_the_closest_setting():
    from service.settings import unknown_variables

    warnings = unknown_variables(
        {
            "VAE_MAX_BATCHES": "8",
            "vae_acess_log": "1",
            "VAE_MAX_BATCH": "8",
            "vae_port": "9000",
            "VAE_DATA_DIR": "/data",
            "HOME": "/root",
        }
    )
    assert warnings == [
        "VAE_MAX_BATCHES is not a vae-service setting and is ignored; did you mean VAE_MAX_BATCH?",
        "vae_acess_log is not a vae-service setting and is ignored; did you mean VAE_ACCESS_LOG?",
    ]


def test_a_variable_like_no_setting_lists_the_settings():
    from service.settings import unknown_variables, variable_names

    (warning,) = unknown_variables({"VAE_ZZZZZZZZ": "1"})
    assert warning.startswith("VAE_ZZZZZZZZ is not a vae-service setting") and all(
        name in warning for name in variable_names()
    )


def test_the_server_logs_one_warning_per_unknown_variable_at_start_up(monkeypatch):
    from service import app as app_module

    logged = []
    monkeypatch.setattr(app_module, "configure_logging", lambda level, json_format: None)
    monkeypatch.setattr(app_module.log, "warning", lambda fmt, *args: logged.append(fmt % args))
    for name in [name for name in os.environ if name.upper().startswith("VAE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("VAE_MAX_INFLIGHT", "3")
    monkeypatch.setenv("VAE_WORKER", "2")
    app_module.app_factory()
    assert logged == [
        "VAE_MAX_INFLIGHT is not a vae-service setting and is ignored; did you mean VAE_MAX_IN_FLIGHT?",
        "VAE_WORKER is not a vae-service setting and is ignored; did you mean VAE_WORKERS?",
    ]


def test_every_vae_variable_in_the_repository_is_a_setting_or_known_elsewhere():
    import re

    from service.settings import OTHER_VARIABLES, variable_names
    from tests.conftest import REPO

    skip = {".git", ".venv", "runs", "artifacts", "node_modules", ".pytest_cache"}
    suffixes = {".py", ".sh", ".md", ".yaml", ".yml", ".toml", ""}
    found = set()
    for path in REPO.rglob("*"):
        misspelt_here = path == Path(__file__)  # this file's misspellings are on purpose
        if (
            path.is_file()
            and path.suffix in suffixes
            and not misspelt_here
            and not skip & set(path.relative_to(REPO).parts)
        ):
            found |= set(re.findall(r"\bVAE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="ignore")))
    assert found, "no VAE_* names found: the scan is broken"
    assert found - set(variable_names()) - set(OTHER_VARIABLES) == set()


def test_every_setting_is_described():
    from service.settings import Settings

    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_the_configuration_page_lists_the_settings_as_generated_from_settings():
    from bench.report import DOCS, PAGES, settings_section

    text = (DOCS / PAGES["settings"]).read_text()
    block = text.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert block == settings_section(), (
        f"docs/{PAGES['settings']}'s settings table is stale: run `python -m bench.report`"
    )


def test_an_empty_admin_token_is_no_token_so_control_stays_off():
    from service.settings import load_settings

    assert load_settings(admin_token="").admin_token is None
    assert load_settings(admin_token="  ").admin_token is None
    assert load_settings(admin_token="s3cret").admin_token.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),  # no cgroup files: the affinity alone
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs: one worker, rounded down
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # cgroup v1, unlimited
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ],
)
def test_the_cpus_available_are_the_affinity_bounded_by_a_cpu_quota(tmp_path, files, expected):
    import os

    from service.settings import available_cpus

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (affinity if expected is None else min(affinity, expected))


def test_workers_default_to_one_per_cpu_and_a_setting_wins(monkeypatch):
    from service import settings as module

    monkeypatch.setattr(module, "available_cpus", lambda: 6)
    assert Settings().workers == 0 and Settings().worker_processes == 6
    assert Settings(workers=2).worker_processes == 2
    monkeypatch.setattr(module, "available_cpus", lambda: 200)
    assert Settings().worker_processes == 64
    # each worker holds its own models: a load or unload by request must be the one process's
    assert Settings(admin_token="t").worker_processes == 1 and Settings(repository_control="open").worker_processes == 1
    assert Settings(admin_token="t", workers=3).worker_processes == 3


def test_each_worker_has_the_cpus_over_the_workers(monkeypatch):
    from service import settings as module

    monkeypatch.setattr(module, "available_cpus", lambda: 4)
    assert Settings().cpus_per_worker == 1.0  # one worker per CPU
    assert Settings(workers=1).cpus_per_worker == 4.0 and Settings(workers=8).cpus_per_worker == 0.5
