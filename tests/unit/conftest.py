"""The unit tests' apps run in this one test process: freezing its objects after every model load
(VAE_GC_FREEZE, service/memory.py) would walk the whole test session's heap each time, and keep what
each test left behind. Off here; tests/unit/service/test_memory.py tests it, and every integration
server (a process of its own) runs with the default, on."""

import pytest


@pytest.fixture(autouse=True)
def _no_gc_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_GC_FREEZE", "false")
