"""Giving freed memory back: malloc_trim where the C library has it, nothing elsewhere."""

from service import memory


def test_trim_reports_whether_the_c_library_can_trim(monkeypatch):
    assert memory.return_freed_memory() is (memory._malloc_trim() is not None)


def test_without_malloc_trim_it_does_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert memory.return_freed_memory() is False
