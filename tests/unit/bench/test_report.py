"""The docs' generated blocks and pages: the benchmark table from a full run's results, and where each goes."""

from __future__ import annotations

import json

import pytest

from bench import report, run
from bench.plan import FULL_CELLS, FULL_RATIOS
from bench.rounds import round_ratios, summarise_cell, summarise_ratios


def window(rps: float, p99_us: int) -> dict:
    return {"rps": rps, "p50_us": 20000, "p90_us": 25000, "p99_us": p99_us, "mean_us": 21000.0}


def full_serving() -> dict:
    """Three rounds; the product's /encode at c=32 serves 1400, 1500, 1450 and the minimal app
    1500, 1500, 1600; every other cell 1000 requests/s."""
    windows = {cell.key: [window(1000.0, 50000 + 1000 * r) for r in range(3)] for cell in FULL_CELLS}
    windows["product/encode_1_raw/c32"] = [window(r, 100000) for r in (1400.0, 1500.0, 1450.0)]
    windows["minimal/encode_1_raw/c32"] = [window(r, 80000) for r in (1500.0, 1500.0, 1600.0)]
    ratios = summarise_ratios(round_ratios(windows, FULL_RATIOS))
    serving = {
        "machine": {"cores": 2, "cpu": "AMD EPYC", "time": "2026-11-24T05:00:00Z", "wrk": "wrk 4.1.0"},
        "git": {"commit": "0123456789abcdef0123", "dirty": False},
        "model": {
            "name": "fashion-mnist-vae",
            "version": "2.0.0",
            "encoder_sha256": "be4c6cfaf5bd" + "0" * 52,
            "decoder_sha256": "7676dc5a6077" + "0" * 52,
        },
        "plan": {"rounds": 3, "window_s": 2, "warmup_s": 1, "seed": 0},
        "cells": {key: summarise_cell(w) for key, w in windows.items()},
        "ratios": ratios,
        "efficiency": summarise_ratios(
            {"ideal_rps_c32": [2900.0, 3000.0, 2950.0], "encode_efficiency_c32": [0.48, 0.5, 0.49]}
        ),
        "in_process": {
            **{f"{n}_images_per_s_batch{b}": 5000.0 for n in ("encoder", "decoder") for b in (1, 16, 256)},
            "png_decode_us": 35.0,
            "response_serialise_us": 3.0,
        },
        "repository": {
            "swap_s": [0.1, 0.12, 0.11],
            "swap_median_s": 0.11,
            "rss_one_model_mb": 134.0,
            "rss_per_extra_model_mb": [30.0, 25.0, 28.0],
            "rss_per_extra_model_median_mb": 28.0,
        },
        "cold_start": {"start_to_ready_s": 0.7},
        "memory": {"product": [147.0], "product_2_workers": [133.0, 131.0]},
    }
    serving["targets_met"] = run.targets(serving)
    return serving


def test_cells_show_the_median_and_range_of_the_rounds():
    text = report.bench_section(full_serving())
    assert (
        "| product `POST /encode`, 1 PNG | 1000 (1000-1000) | 1000 (1000-1000) | 1450 (1400-1500) | "
        "1000 (1000-1000) | 20.0 / 25.0 / 100.0 (100.0-100.0) |"
    ) in text
    assert "| product `POST /elbo?k=100` | 1000 (1000-1000) |" in text


def test_the_target_is_judged_on_the_median_of_per_round_ratios():
    # Per round 1400/1500, 1500/1500, 1450/1600: median 0.933x, range 0.906-1.000x.
    text = report.bench_section(full_serving())
    assert "| `/encode` at c=32 vs the minimal app (>= 0.9x) | 0.93x (0.91-1.00x) | yes |" in text


def test_the_header_names_commit_model_hashes_and_rounds():
    text = report.bench_section(
        full_serving(),
        {
            "threads": 2,
            "seconds_per_epoch": 22.9,
            "images_per_second": 2626,
            "command": "vae-train --epochs 1 --threads 2",
        },
    )
    assert (
        "at commit `0123456789ab`, model `fashion-mnist-vae` 2.0.0 (encoder `be4c6cfaf5bd`, decoder `7676dc5a6077`)"
    ) in text
    assert "in each of 3 rounds every cell got one 2 s window after a 1 s warm-up" in text
    assert "22.9 s per epoch" in text
    assert "| efficiency: rps / (1 / (ceiling time + in-process work)) | 0.49 (0.48-0.50) (ideal 2950 rps) |" in text


def test_a_dirty_tree_is_said():
    serving = full_serving()
    serving["git"]["dirty"] = True
    assert "(with uncommitted changes)" in report.bench_section(serving)


@pytest.fixture
def docs(tmp_path, monkeypatch):
    """A docs folder with every generated block empty, results and an empty model repository of its own."""
    results = tmp_path / "results"
    results.mkdir()
    pages = tmp_path / "docs"
    for name, page in report.PAGES.items():
        path = pages / page
        path.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text() if path.exists() else f"# {page}\n"
        path.write_text(text + f"<!-- {name}:begin -->\nold {name}\n<!-- {name}:end -->\n")
    monkeypatch.setattr(report, "DOCS", pages)
    monkeypatch.setattr(report, "RESULTS", results)
    (tmp_path / "empty-repository").mkdir()
    monkeypatch.setattr(report.model_card, "REPOSITORY", tmp_path / "empty-repository")
    return pages, results


def test_update_docs_writes_the_bench_block_into_the_benchmarks_page(docs):
    pages, results = docs
    (results / "serving.json").write_text(json.dumps(full_serving()))
    report.update_docs()
    text = (pages / "benchmarks.md").read_text()
    assert "old bench\n" not in text and "0.93x (0.91-1.00x)" in text
    assert "old train-throughput" in text  # no results for it: left as it was
    assert "| `VAE_PORT` |" in (pages / "configuration.md").read_text()


def test_update_docs_leaves_a_single_window_run_alone(docs, capsys):
    pages, results = docs
    (results / "serving.json").write_text(json.dumps({"runs": {}, "ratios": {}}))
    report.update_docs()
    assert "old bench" in (pages / "benchmarks.md").read_text()
    assert "no interleaved rounds" in capsys.readouterr().out


def test_the_repository_figures_are_reported():
    text = report.bench_section(full_serving())
    assert "took 0.11 s (median of 3)" in text and "added 28 MB of resident memory (median of 3; 134 MB" in text


def test_update_docs_writes_the_seed_argument_block_into_its_design_note(docs):
    from bench import seed_argument
    from tests.unit.service.fakes import LinearGaussianVAE

    pages, results = docs
    fake = LinearGaussianVAE()
    result = seed_argument.run(
        fake, fake.likelihood, fake.draw(2, seed=0), [0], 1, patch=2, seed=0, binarize_seed=0, k_max=20
    )
    result.update(
        command="python -m bench.seed_argument",
        model={"name": "fake-vae", "version": "9.9.9"},
        machine={"time": "2026-01-01 00:00 UTC"},
    )
    (results / "seed_argument.json").write_text(json.dumps(result))
    report.update_docs()
    text = (pages / report.PAGES["seed-argument"]).read_text()
    assert "old seed-argument" not in text and "| shifted 2 pixels |" in text and "Ranked, most likely first" in text


def test_a_table_measured_on_another_version_than_the_served_default_says_so(tmp_path, monkeypatch):
    from tests.unit.bench.test_model_card import manifest, write

    write(tmp_path, manifest("fashion-mnist-vae", "2.0.0", "bernoulli", 230.0))
    write(tmp_path, manifest("fashion-mnist-vae", "3.1.0", "bernoulli", 226.4))
    monkeypatch.setattr(report.model_card, "REPOSITORY", tmp_path)
    note = report.served_default_note({"name": "fashion-mnist-vae", "version": "2.0.0"}, "Why it matters.")
    assert "**Measured on `fashion-mnist-vae` 2.0.0, not on the served default 3.1.0.** Why it matters." in note
    assert report.served_default_note({"name": "fashion-mnist-vae", "version": "3.1.0"}, "") == ""


def test_every_generated_block_is_in_its_docs_page():
    for name, page in report.PAGES.items():
        text = (report.DOCS / page).read_text()
        assert f"<!-- {name}:begin -->" in text and f"<!-- {name}:end -->" in text, f"docs/{page} lacks {name}"


def test_the_docs_anomaly_table_is_of_the_served_default():
    recorded = json.loads((report.RESULTS / "anomaly.json").read_text())["model"]
    assert recorded["version"] == report.model_card.served_default(recorded["name"])
    assert f"model `{recorded['name']}` {recorded['version']}" in (report.DOCS / "anomaly.md").read_text()
