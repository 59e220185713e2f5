import pytest

from tests.unit.export.exports import export_tiny_model


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A tiny model exported by vae-export (with its report and int8 graphs). Tests read it, or copy it
    (`exports.copy_model`) to change it: one training and export serves every export test module."""
    return export_tiny_model(tmp_path_factory.mktemp("export"))
