"""bench.hot_path: its steps, and the table it writes into docs/benchmarks.md from a recorded run."""

import json

import pytest

from bench import hot_path, report
from bench.measurements import limit_ratios
from bench.plan import Bench, Plan
from bench.rounds import Cell
from bench.run import write_json


def test_steps_are_name_revision_and_settings_in_order():
    assert hot_path.parse_steps(["a=HEAD~1", "b=.,VAE_GC_FREEZE=false"]) == [
        ("a", "HEAD~1"),
        ("b", ".,VAE_GC_FREEZE=false"),
    ]
    assert hot_path.parse_steps(None)[-1] == ("now", ".")
    for bad in (["a"], ["=HEAD"], ["a="], ["a=.,NOVALUE"]):
        with pytest.raises(SystemExit):
            hot_path.parse_steps(bad)
    with pytest.raises(SystemExit, match="name of its own"):
        hot_path.parse_steps(["a=HEAD", "a=."])
    with pytest.raises(SystemExit, match="ASGI floor"):
        hot_path.parse_steps([f"{hot_path.FLOOR}=HEAD"])
    with pytest.raises(SystemExit, match="lean app"):
        hot_path.parse_steps([f"{hot_path.LEAN}=HEAD"])


def recorded() -> dict:
    spread = lambda v: {"median": v, "min": v, "max": v, "q1": v, "q3": v, "n": 1}  # noqa: E731
    steps = [
        {"name": "before", "revision": "abc", "commit": "a" * 40},
        {"name": "now", "revision": ".,X=1", "commit": "b" * 40},
    ]
    windows = lambda *rps: [{"rps": v} for v in rps]  # noqa: E731
    cells = {
        "before/encode_1_raw/c32": {"rps": spread(500.0), "windows": windows(500.0, 400.0, 500.0)},
        "before/v2_encoder_binary/c32": {"rps": spread(400.0), "windows": windows(400.0, 400.0, 400.0)},
        "now/encode_1_raw/c32": {"rps": spread(1000.0), "windows": windows(1000.0, 1200.0, 750.0)},
        "now/v2_encoder_binary/c32": {"rps": spread(1100.0), "windows": windows(1100.0, 1000.0, 1200.0)},
    }
    ratios = {
        "before_encode_vs_compute_limit": spread(0.1),
        "before_encode_vs_compute_limit_with_pillow_decode": spread(0.2),
        "before_v2_binary_vs_encode": spread(0.8),
        "now_encode_vs_compute_limit": spread(0.2),
        "now_encode_vs_compute_limit_with_pillow_decode": spread(0.4),
        "now_v2_binary_vs_encode": spread(1.1),
        "now_encode_vs_before": spread(2.0),
    }
    return {
        "command": "python -m bench.hot_path",
        "model": {"name": "m", "version": "1.0.0"},
        "plan": {"rounds": 7, "window_s": 3},
        "pinning": {"server_cpus": "0", "wrk_cpus": "1"},
        "machine": {"time": "2026-12-07T00:00:00Z"},
        "compute_limit": {
            "requests_per_s": 5000.0,
            "png_decode_us": 20.0,
            "encoder_us_per_image_batch32": 170.0,
            "response_serialise_us": 10.0,
            "png_decode_pillow_us": 100.0,
            "requests_per_s_with_pillow_decode": 3571.0,
        },
        "steps": steps,
        "cells": cells,
        "ratios": ratios,
        "p99_ms": {"before": spread(100.0), "now": spread(30.0)},
    }


def test_the_table_has_a_row_per_step_with_its_ratios():
    table = hot_path.hot_path_section(recorded())
    rows = [line for line in table.splitlines() if line.startswith("| before") or line.startswith("| now")]
    assert len(rows) == 2
    assert "| now | `bbbbbbb` X=1 | 1000 (1000-1000) | 30.0 ms (30.0-30.0 ms) | 0.20x" in rows[1]
    # the step before, round by round: /encode 2.0, 3.0, 1.5; v2 2.75, 2.5, 3.0
    assert (
        "| 2.00x (2.00-2.00x) | 2.00x (1.50-3.00x) | 1100 (1100-1100) | 2.75x (2.50-3.00x) | 1.10x (1.10-1.10x) |"
        in rows[1]
    )
    assert [cell.strip() for cell in rows[0].split("|")].count("-") == 3  # the first step has nothing before it
    assert "5000 requests/s" in table and "3571 requests/s" in table


def test_the_report_writes_the_recorded_table_into_the_benchmarks_page(tmp_path, monkeypatch):
    write_json(tmp_path / "hot_path.json", recorded())
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    assert report.blocks()["hot-path"] == hot_path.hot_path_section(
        json.loads((tmp_path / "hot_path.json").read_text())
    )


def test_every_servers_encode_at_c32_is_divided_by_the_compute_limit():
    cells = (
        Cell("product", "encode_1_raw", 32),
        Cell("minimal", "encode_1_raw", 32),
        Cell("product", "encode_1_raw", 1),
    )
    bench = Bench(Plan("x", cells, {}, ()), {}, [], {})
    bench.windows = {
        cells[0].key: [{"rps": 1000.0}, {"rps": 2000.0}],
        cells[1].key: [{"rps": 500.0}] * 2,
        cells[2].key: [{"rps": 1.0}] * 2,
    }
    ratios = limit_ratios(bench, {"compute_limit": {"requests_per_s": 4000.0}})
    assert set(ratios) == {"product_encode_c32_vs_compute_limit", "minimal_encode_c32_vs_compute_limit"}
    assert ratios["product_encode_c32_vs_compute_limit"]["rounds"] == [0.25, 0.5]


def test_the_table_says_what_else_used_the_machine_when_it_was_measured():
    with_reading = {**recorded(), "other_cpus_busy": {"median": 0.02, "max": 0.04, "threshold": 0.15}}
    assert "0.02 CPUs busy (at most 0.04; a run is written only under 0.15)" in hot_path.hot_path_section(with_reading)
    assert "CPUs busy" not in hot_path.hot_path_section(recorded())  # a run recorded before the check


def test_a_run_on_a_busy_machine_is_not_written(tmp_path, monkeypatch, capsys):
    busy = {**recorded(), "other_cpus_busy": {"median": 1.1, "max": 1.3, "threshold": 0.15, "quiet": False}}
    busy["compute_limit"] = {**busy["compute_limit"], "per_request_us": 200.0}
    monkeypatch.setattr(hot_path, "run", lambda *args: busy)
    monkeypatch.setattr(hot_path.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert hot_path.main(["--results", str(tmp_path)]) == 3
    assert not (tmp_path / "hot_path.json").exists()
    assert "kept 1.10 CPUs busy" in capsys.readouterr().err
    assert hot_path.main(["--results", str(tmp_path), "--allow-busy"]) == 0
    assert json.loads((tmp_path / "hot_path.json").read_text())["other_cpus_busy"]["median"] == 1.1


def test_the_asgi_floor_bounds_what_a_server_can_reach_of_the_limit():
    # round 1: the floor takes 100 us a request, the limit 300 us: at best 300 / 400 of the limit
    # round 2: the floor 200 us, the limit 200 us: at best half of it
    ratios = hot_path.floor_ratios(
        [{"rps": 10_000.0}, {"rps": 5000.0}], [{"requests_per_s": 10_000 / 3}] * 1 + [{"requests_per_s": 5000.0}]
    )
    assert ratios["floor_bound_vs_compute_limit"] == pytest.approx([0.75, 0.5])
    assert ratios["floor_time_vs_compute_limit_time"] == pytest.approx([1 / 3, 1.0])


def test_the_table_gives_the_floor_when_it_was_measured():
    spread = lambda v: {"median": v, "min": v, "max": v, "q1": v, "q3": v, "n": 1}  # noqa: E731
    with_floor = recorded()
    with_floor["cells"] = {**with_floor["cells"], f"{hot_path.FLOOR}/encode_1_raw/c32": {"rps": spread(12500.0)}}
    with_floor["ratios"] = {
        **with_floor["ratios"],
        "floor_bound_vs_compute_limit": spread(0.71),
        "floor_time_vs_compute_limit_time": spread(0.4),
    }
    table = hot_path.hot_path_section(with_floor)
    assert "12500 requests/s (80 us a request, 0.40x the limit's time)" in table
    assert "would reach 0.71x the limit" in table
    assert "ASGI floor" not in hot_path.hot_path_section(recorded())  # a run recorded before the floor


def test_the_lean_app_is_compared_with_the_limit_and_each_step_round_by_round():
    limits = [
        {"requests_per_s": 4000.0, "encoder_us_per_image_batch32": 100.0},
        {"requests_per_s": 5000.0, "encoder_us_per_image_batch32": 200.0},
    ]
    lean = [{"rps": 2000.0, "model_us_per_image": 150.0}, {"rps": 2000.0}]  # no model call seen in round 2
    ratios = hot_path.lean_ratios(lean, limits, {"now": [{"rps": 1000.0}, {"rps": 1500.0}]})
    assert ratios["lean_encode_vs_compute_limit"] == pytest.approx([0.5, 0.4])
    assert ratios["lean_model_time_vs_limit"] == pytest.approx([1.5])
    assert ratios["now_encode_vs_lean"] == pytest.approx([0.5, 0.75])


def test_the_table_gives_the_lean_app_when_it_was_measured():
    spread = lambda v: {"median": v, "min": v, "max": v, "q1": v, "q3": v, "n": 1}  # noqa: E731
    with_lean = recorded()
    lean_windows = [{"rps": 2400.0, "model_us_per_image": 160.0, "mean_batch": 12.0}]
    with_lean["cells"] = {
        **with_lean["cells"],
        f"{hot_path.LEAN}/encode_1_raw/c32": {"rps": spread(2400.0), "windows": lean_windows},
    }
    with_lean["ratios"] = {
        **with_lean["ratios"],
        "lean_encode_vs_compute_limit": spread(0.48),
        "lean_model_time_vs_limit": spread(1.2),
        "before_encode_vs_lean": spread(0.21),
        "now_encode_vs_lean": spread(0.42),
    }
    table = hot_path.hot_path_section(with_lean)
    assert "2400 (2400-2400) requests/s, 0.48x (0.48-0.48x) the limit" in table
    assert "160 us (160-160 us) per image at a mean batch of 12.0 (12.0-12.0), 1.20x (1.20-1.20x)" in table
    assert "before 0.21x (0.21-0.21x); now 0.42x (0.42-0.42x)" in table
    assert "lean app" not in hot_path.hot_path_section(recorded())  # a run recorded before the lean app


METRICS = """# HELP vae_inference_duration_seconds time in onnxruntime and the scoring math
vae_inference_duration_seconds_bucket{le="0.001",model="m",operation="encode",version="1"} 3.0
vae_inference_duration_seconds_count{model="m",operation="encode",version="1"} 4.0
vae_inference_duration_seconds_sum{model="m",operation="encode",version="1"} 0.01
vae_inference_duration_seconds_count{model="m",operation="decode",version="1"} 1.0
vae_inference_duration_seconds_sum{model="m",operation="decode",version="1"} 0.002
vae_images_processed_total{model="m",operation="encode",version="1"} 40.0
vae_images_processed_total{model="m",operation="decode",version="1"} 8.0
vae_images_processed_created{model="m",operation="encode",version="1"} 1.7e+09
vae_requests_total{method="POST",route="/encode",status="200"} 40.0
"""


def test_the_model_calls_of_a_window_are_read_from_the_servers_metrics():
    before = hot_path.metric_totals(METRICS)
    assert before == {
        "vae_inference_duration_seconds_sum": pytest.approx(0.012),
        "vae_inference_duration_seconds_count": 5.0,
        "vae_images_processed_total": 48.0,
    }
    after = {**before, "vae_inference_duration_seconds_sum": 0.032, "vae_inference_duration_seconds_count": 7.0}
    after["vae_images_processed_total"] = 48.0 + 16
    # 20 ms over 16 images in 2 calls
    assert hot_path.model_call_share(before, after) == {"model_us_per_image": pytest.approx(1250.0), "mean_batch": 8.0}
    assert hot_path.model_call_share(before, before) == {}  # no model call in the window: nothing to say


def test_the_model_calls_table_follows_the_steps_when_recorded():
    assert "model time per image" not in hot_path.hot_path_section(recorded())  # runs from before it was measured
    run = recorded()
    for name in ("before", "now"):
        for route, key in (("encode_1_raw", "encode"), ("v2_encoder_binary", "v2")):
            for window in run["cells"][f"{name}/{route}/c32"]["windows"]:
                window.update({"model_us_per_image": 340.0, "mean_batch": 10.5})
            run["ratios"][f"{name}_{key}_model_time_vs_limit"] = {"median": 2.0, "min": 1.5, "max": 2.5}
    table = hot_path.hot_path_section(run)
    assert "| now | 340 us (340-340 us) | 10.5 (10.5-10.5) | 2.00x (1.50-2.50x) | 340 us" in table
