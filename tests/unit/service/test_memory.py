"""Giving freed memory back: malloc_trim where the C library has it, nothing elsewhere."""

from service import memory


def test_trim_reports_whether_the_c_library_can_trim(monkeypatch):
    assert memory.return_freed_memory() is (memory._malloc_trim() is not None)


def test_without_malloc_trim_it_does_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert memory.return_freed_memory() is False


SETTLE = """
import gc, weakref
from service.memory import settle_garbage_collector

class Node:
    pass

a, b = Node(), Node()
a.peer, b.peer = b, a  # a cycle: only the cyclic collector frees it
gone = weakref.ref(a)
seconds = settle_garbage_collector()
frozen = gc.get_freeze_count()
assert frozen > 1000 and seconds >= 0, frozen  # the modules, the objects alive now
del a, b
gc.collect()
assert gone() is not None, "a frozen cycle is out of the collector's sight"
settle_garbage_collector()
assert gone() is None, "the next settle thaws what it froze, and collects the cycle"
print("ok")
"""


def test_settling_freezes_what_lives_and_thaws_it_at_the_next_settle():
    """In a process of its own: freezing this test session's heap would keep what other tests leave."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SETTLE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
