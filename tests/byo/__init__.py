"""VAEs this project did not design, as their authors would write them: the suite imports them with vae-import
and serves them (tests/integration/test_bring_your_own_vae.py, tests/unit/export/test_import_*.py)."""
