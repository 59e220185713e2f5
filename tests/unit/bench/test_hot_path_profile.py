"""bench.hot_path_profile: perf's report grouped by what each shared object does, and the table it writes."""

import pytest

from bench import hot_path_profile as profile

REPORT = """# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 15K of event 'cpu-clock:ppp'
#
# Overhead  Command          Shared Object
# ........  ...............  ..........................................
#
    43.00%  python           libpython3.11.so.1.0
    30.00%  python           onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so
     5.00%  python           [kernel.kallsyms]
     4.00%  swapper          [kernel.kallsyms]
     3.00%  python           _pyspng_c.cpython-311-x86_64-linux-gnu.so
     2.00%  python           libz.so.1.2.13
     2.00%  python           libc.so.6
     1.50%  python           loop.cpython-311-x86_64-linux-gnu.so
     1.00%  python           parser.cpython-311-x86_64-linux-gnu.so
     0.50%  python           something-new.so
"""


def test_perfs_report_is_grouped_by_what_each_object_does():
    found = profile.shares(REPORT)
    assert found == pytest.approx(
        {
            "python": 0.43,
            "onnxruntime": 0.30,
            "kernel": 0.05,
            "idle": 0.04,
            "png decode": 0.05,
            "libc": 0.02,
            "event loop": 0.015,
            "http parser": 0.01,
            "other": 0.005,
        }
    )
    assert profile.shares("# only comments\n\n") == {}


def recorded() -> dict:
    spread = lambda v: {"median": v, "min": v, "max": v, "q1": v, "q3": v, "n": 1}  # noqa: E731

    def server(rps: float, us: dict[str, float]) -> dict:
        total = sum(us.values())
        return {
            "rps": spread(rps),
            "per_request_us": spread(1e6 / rps),
            "us_per_request": {g: spread(v) for g, v in us.items()},
            "shares": {g: spread(v / total) for g, v in us.items()},
        }

    return {
        "command": "python -m bench.hot_path_profile --rounds 3",
        "model": {"name": "m", "version": "1.0.0"},
        "plan": {"rounds": 3, "window_s": 6},
        "machine": {"time": "2026-12-07T00:00:00Z"},
        "groups": [name for name, _ in profile.GROUPS] + [profile.OTHER, profile.IDLE],
        "servers": {
            profile.PRODUCT: server(2000.0, {"python": 300.0, "onnxruntime": 200.0}),
            profile.LEAN: server(4000.0, {"python": 100.0, "onnxruntime": 150.0}),
        },
    }


def test_the_table_puts_the_product_beside_the_lean_app_group_by_group():
    table = profile.profile_section(recorded())
    assert "the product served 2000 requests/s (500 us a request), the lean app 4000 (250 us)" in table
    assert "| python | 300 | 60% | 100 | 40% | +200 |" in table
    assert "| onnxruntime | 200 | 40% | 150 | 60% | +50 |" in table
    assert "| kernel |" not in table  # a group neither server spent time in has no row


def test_it_says_what_it_needs_when_perf_is_missing(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(profile.shutil, "which", lambda name: None if name == "perf" else f"/usr/bin/{name}")
    assert profile.main(["--results", str(tmp_path)]) == 2
    assert "linux-perf" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
