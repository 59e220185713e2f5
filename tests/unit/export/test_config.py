"""The export as data: vae-export's flags parse into an ExportConfig, and a config that cannot work is refused."""

from pathlib import Path

import pytest

from export.cli import parse_args
from export.config import ExportConfig


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


@pytest.mark.parametrize("field", ["parity_count", "calibration_count", "threads"])
def test_a_count_that_is_not_positive_is_refused_with_the_flag(field):
    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')}"):
        ExportConfig(checkpoint=Path("a.pt"), out_dir=Path("out"), **{field: 0})


def test_the_cli_refuses_it_as_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["a.pt", "out", "--threads", "0"])
    assert exit_info.value.code == 2 and "--threads" in capsys.readouterr().err
