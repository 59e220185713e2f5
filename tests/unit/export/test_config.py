"""export/config.py: the export as data; a config that cannot work is refused, naming the flag."""

from pathlib import Path

import pytest

from export.config import ExportConfig


@pytest.mark.parametrize("field", ["parity_count", "calibration_count", "threads"])
def test_a_count_that_is_not_positive_is_refused_with_the_flag(field):
    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')}"):
        ExportConfig(checkpoint=Path("a.pt"), out_dir=Path("out"), **{field: 0})
