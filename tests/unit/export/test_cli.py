"""export/cli.py, vae-export: its flags parse into an ExportConfig (a bad one is a usage error), and
inputs it refuses exit with status 2, leaving the directory alone."""

from pathlib import Path

import pytest

from export.cli import parse_args
from export.config import ExportConfig
from tests.unit.export.exports import export_again


def test_the_flags_parse_into_the_config():
    config = parse_args(["run/best.pt", "out", "--int8", "--no-calibrate", "--parity-count", "64", "--report", "r"])
    assert config == ExportConfig(
        checkpoint=Path("run/best.pt"),
        out_dir=Path("out"),
        int8=True,
        calibrate=False,
        parity_count=64,
        report=Path("r"),
    )


def test_the_defaults_are_the_configs():
    assert parse_args(["a.pt", "out"]) == ExportConfig(checkpoint=Path("a.pt"), out_dir=Path("out"))


def test_the_cli_refuses_it_as_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["a.pt", "out", "--threads", "0"])
    assert exit_info.value.code == 2 and "--threads" in capsys.readouterr().err


def test_export_refuses_to_replace_a_directory_it_did_not_write(exported, tmp_path, monkeypatch, capsys):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    assert export_again(exported, tmp_path, monkeypatch, tmp_path / "home") == 2
    assert "is not a model directory (no manifest.json" in capsys.readouterr().err
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
