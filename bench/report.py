"""Write the documentation's generated pages and blocks from recorded results: never typed by hand.

    python -m bench.report   (also run by `make bench`)

Each generated table names the model and version it was measured on, and says so when that is not
the version the bundled repository serves by default. It writes, under docs/:

- model-card.md, whole: one card per bundled model from its newest manifest (bench/model_card.py),
  with the report's figures copied into docs/figures/;
- in benchmarks.md, the serving table from bench/results/serving.json and training.json (medians of
  the interleaved rounds, with their range), the training throughput table (train_throughput.json), and
  the encoder graph over gRPC against HTTP (grpc_http.json), and the hot path's steps against the per-core
  compute limit (hot_path.json), and where the servers' core spends its time (hot_path_profile.json);
- in deploying.md, the scale-out table (scaleout.json);
- in anomaly.md, the anomaly benchmark's table (anomaly.json) and its figure, and the anomaly maps'
  table (anomaly_maps.json);
- in design/sampling.md, the prior-versus-importance table (seed_argument.json) and its figure;
- in design/gaussian-sigma.md, the shared against per-pixel sigma (gaussian_scales.json);
- in configuration.md, the settings table, from service/settings.py's Settings (names, defaults,
  limits, descriptions) and the access log's recorded cost in bench/results/inprocess.json.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Literal, get_args, get_origin

from bench import model_card

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
RESULTS = REPO / "bench" / "results"

# Each generated block: the docs page (under DOCS) that holds its <!-- NAME:begin --> ... <!-- NAME:end -->.
PAGES = {
    "bench": "benchmarks.md",
    "train-throughput": "benchmarks.md",
    "grpc-http": "benchmarks.md",
    "hot-path": "benchmarks.md",
    "hot-path-profile": "benchmarks.md",
    "scaleout": "deploying.md",
    "anomaly": "anomaly.md",
    "anomaly-maps": "anomaly.md",
    "seed-argument": "design/sampling.md",
    "gaussian-scales": "design/gaussian-sigma.md",
    "settings": "configuration.md",
}
# Figures a results file comes with, copied beside the pages that show them (mkdocs serves docs/ only).
FIGURES = {"anomaly_scores.png": "anomaly.json", "seed_argument.png": "seed_argument.json"}


def _replace(text: str, name: str, body: str, page: str = "the page") -> str:
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{page} has no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def served_default_note(model: dict | None, what: str) -> str:
    """A line under a table measured on a version other than the one the bundled repository serves by
    default: which one it was, and that the figures are not yet re-measured on the default."""
    if not model:
        return ""
    default = model_card.served_default(model["name"], model_card.REPOSITORY)
    if default is None or default == model["version"]:
        return ""
    return (
        f"\n**Measured on `{model['name']}` {model['version']}, not on the served default {default}.** "
        f"{what} Re-measuring on {default} is still to do.\n"
    )


def bench_section(serving: dict, training: dict | None = None) -> str:
    """The benchmark block from a full run's results: each cell and ratio as the median of the
    interleaved rounds with its range (min-max), and the targets judged on the medians."""
    cells, ratios, m, plan = serving["cells"], serving["ratios"], serving["machine"], serving["plan"]
    git, model = serving["git"], serving["model"]
    tree = "" if git["dirty"] is False else " (with uncommitted changes)" if git["dirty"] else " (git state unknown)"
    lines = [
        f"Measured by `make bench` on {m['cores']} cores ({m['cpu']}), {m['time']}, at commit "
        f"`{(git['commit'] or 'unknown')[:12]}`{tree}, model `{model['name']}` {model['version']} (encoder "
        f"`{model['encoder_sha256'][:12]}`, decoder `{model['decoder_sha256'][:12]}`), with {m['wrk']} as the "
        f"load generator in its own process. Every server ran throughout; in each of {plan['rounds']} rounds "
        f"every cell got one {plan['window_s']} s window after a {plan['warmup_s']} s warm-up, in a shuffled "
        f"order (seed {plan['seed']}). Requests/s and latency (ms): the median of the rounds, "
        f"(min-max) in brackets:",
        "",
        "| server, route | c=1 | c=8 | c=32 | c=64 | p50 / p90 / p99 at c=32 |",
        "|---|---|---|---|---|---|",
    ]
    rows = [
        ("product", "encode_1_raw", "product `POST /encode`, 1 PNG"),
        ("minimal", "encode_1_raw", "minimal FastAPI + onnxruntime `/encode`"),
        ("ceiling", "encode_1_raw", "ceiling: async no-op POST"),
        ("naive", "encode_1_raw", "naive: torch eager `/encode`"),
        ("product", "encode_16_multipart", "product `POST /encode`, 16 PNGs multipart"),
        ("product", "sample_16_png", "product `GET /sample?n=16` (PNG grid)"),
        ("product", "elbo_k1", "product `POST /elbo?k=1`"),
        ("product", "elbo_k100", "product `POST /elbo?k=100`"),
    ]
    for kind, route, label in rows:
        rps = [cells[f"{kind}/{route}/c{c}"]["rps"] for c in (1, 8, 32, 64)]
        r32 = cells[f"{kind}/{route}/c32"]
        latency = " / ".join(f"{r32[p]['median'] / 1000:.1f}" for p in ("p50_us", "p90_us", "p99_us"))
        lines.append(
            f"| {label} | {' | '.join(_spread(s, '.0f') for s in rps)} | {latency} "
            f"({r32['p99_us']['min'] / 1000:.1f}-{r32['p99_us']['max'] / 1000:.1f}) |"
        )
    ip, cold, rss, efficiency = serving["in_process"], serving["cold_start"], serving["memory"], serving["efficiency"]
    met = serving["targets_met"]
    x = lambda name: _spread(ratios[name], ".2f", "x")  # noqa: E731
    v2_rows = (
        []
        if "v2_binary_vs_encode_c32" not in ratios
        else [
            f"| open inference protocol, encoder graph at c=32 vs `/encode`: binary tensors (>= 0.9x) / JSON tensors | "
            f"{x('v2_binary_vs_encode_c32')} / {x('v2_json_vs_encode_c32')} | "
            f"{_yes(met['v2 binary encoder >= 0.9x /encode (c32)'])} |"
        ]
    )
    lines += [
        "",
        "| target (ratios taken within each round: median (min-max)) | measured | met |",
        "|---|---|---|",
        f"| `/encode` at c=32 vs the minimal app (>= 0.9x) | {x('encode_vs_minimal_c32')} | "
        f"{_yes(met['encode >= 0.9x minimal (c32)'])} |",
        f"| `/encode` at c=32 vs the naive torch baseline (>= 2x) | {x('encode_vs_naive_c32')} | "
        f"{_yes(met['encode >= 2x naive (c32)'])} |",
        f"| p99 at c=1 vs the naive baseline (<= 1x) | {x('p99_c1_product_vs_naive')} | "
        f"{_yes(met['p99 at c1 <= naive'])} |",
        f"| cold start to ready (<= 1.5 s) | {cold['start_to_ready_s']:.2f} s | "
        f"{_yes(met['start to ready <= 1.5 s'])} |",
        f"| RSS per worker after the rounds (<= 200 MB) | {max(rss['product']):.0f} MB (1 worker), "
        f"{max(rss['product_2_workers']):.0f} MB (2 workers) | {_yes(met['RSS per worker <= 200 MB'])} |",
        f"| `/encode` vs the ceiling (no-op route) at c=32 | {x('encode_vs_ceiling_c32')} | - |",
        f"| efficiency: rps / (1 / (ceiling time + in-process work)) | "
        f"{_spread(efficiency['encode_efficiency_c32'], '.2f')} "
        f"(ideal {efficiency['ideal_rps_c32']['median']:.0f} rps) | - |",
        f"| 2 workers vs 1 at c=32 / c=64 | {x('two_workers_vs_one_c32')} / {x('two_workers_vs_one_c64')} | - |",
        f"| micro-batching on (default) vs off: requests/s at c=32 / c=64 | {x('micro_batch_vs_off_c32')} / "
        f"{x('micro_batch_vs_off_c64')} | - |",
        f"| micro-batching on vs off: p99 at c=1 / c=64 | {x('micro_batch_p99_vs_off_c1')} / "
        f"{x('micro_batch_p99_vs_off_c64')} | - |",
        *v2_rows,
        "",
        f"In-process limit (onnxruntime, 1 thread): encoder {ip['encoder_images_per_s_batch1']:.0f} / "
        f"{ip['encoder_images_per_s_batch16']:.0f} / {ip['encoder_images_per_s_batch256']:.0f} images/s at batch "
        f"1 / 16 / 256, decoder {ip['decoder_images_per_s_batch1']:.0f} / {ip['decoder_images_per_s_batch16']:.0f}"
        f" / {ip['decoder_images_per_s_batch256']:.0f}; decoding one PNG {ip['png_decode_us']:.0f} us, "
        f"serialising one `/encode` response {ip['response_serialise_us']:.0f} us.",
    ]
    repo = serving.get("repository")
    if repo is not None:
        lines += [
            "",
            f"Model repository: a live swap (`POST /v2/repository/models/{{name}}/load` of a new version: "
            f"loaded, hash-checked, warmed up, then given the traffic) took {repo['swap_median_s']:.2f} s "
            f"(median of {len(repo['swap_s'])}); each extra model of the bundled model's size added "
            f"{repo['rss_per_extra_model_median_mb']:.0f} MB of resident memory (median of "
            f"{len(repo['rss_per_extra_model_mb'])}; {repo['rss_one_model_mb']:.0f} MB with one model).",
        ]
    if training is not None:
        lines += [
            "",
            f"Training (default model, Fashion-MNIST, {training['threads']} threads): "
            f"{training['seconds_per_epoch']:.1f} s per epoch, {training['images_per_second']:.0f} images/s "
            f"(`{training['command']}`).",
        ]
    return "\n".join(lines) + "\n"


def _model_name(model: dict | None) -> str:
    """`name` version of a result's model record, as the docs name it."""
    return f"`{model['name']}` {model['version']}" if model else "not recorded"


def _spread(summary: dict, spec: str, unit: str = "") -> str:
    """'median (min-max)' of one summarised cell metric or ratio."""
    return (
        f"{format(summary['median'], spec)}{unit} ({format(summary['min'], spec)}-{format(summary['max'], spec)}{unit})"
    )


def settings_section() -> str:
    """One row per `Settings` field, so a new setting appears in docs/configuration.md when this runs."""
    from service.settings import PREFIX, Settings

    lines = ["| variable | default | allowed | what it sets |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory is not None else field.default
        if default is None:
            shown = "unset"
        else:
            shown = f"`{json.dumps(default) if isinstance(default, (bool, list)) else default}`"
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{PREFIX}{name.upper()}` | {shown} | {_allowed(field)} | {description} |")
    recorded = RESULTS / "inprocess.json"
    run = json.loads(recorded.read_text()) if recorded.exists() else {}
    if "access_log_cost_us" in run:
        lines += [
            "",
            f"The access log's cost, from `bench/results/inprocess.json` (`{run['command']}`, "
            f"{run['machine']['time']}, model {_model_name(run.get('model'))}): {run['access_log_cost_us']:.0f} us "
            f"a request on `/encode`, against {run['product_us']:.0f} us for the request without it.",
        ]
    return "\n".join(lines) + "\n"


def _allowed(field) -> str:
    """The field's limits as text: its annotated bounds, or its choices."""
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    bounds = [
        f"{symbols[key]} {getattr(rule, key)}" for rule in field.metadata for key in symbols if hasattr(rule, key)
    ]
    if get_origin(field.annotation) is Literal:
        return ", ".join(get_args(field.annotation))
    if field.annotation is bool:
        return "true, false"
    return ", ".join(bounds) or "-"


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


# Generated block, its recorded results file in bench/results/, and the function that turns them into the block.
RECORDED_SECTIONS = (
    ("anomaly", "anomaly.json", "bench.anomaly", "anomaly_section"),
    ("anomaly-maps", "anomaly_maps.json", "bench.anomaly_maps", "maps_section"),
    ("gaussian-scales", "gaussian_scales.json", "bench.gaussian_scales", "section"),
    ("seed-argument", "seed_argument.json", "bench.seed_argument", "argument_section"),
    ("scaleout", "scaleout.json", "bench.scaleout", "scaleout_section"),
    ("train-throughput", "train_throughput.json", "bench.train_throughput", "throughput_section"),
    ("grpc-http", "grpc_http.json", "bench.grpc_http", "grpc_http_section"),
    ("hot-path", "hot_path.json", "bench.hot_path", "hot_path_section"),
    ("hot-path-profile", "hot_path_profile.json", "bench.hot_path_profile", "profile_section"),
)
SERVING_NOTE = (
    "3.x keeps 2.0.0's encoder and decoder architecture, so `/encode` runs graphs of the same shape; "
    "`/sample` and `/elbo` also run 3.x's mixture prior (`prior.onnx`), which these figures do not include."
)


def blocks() -> dict[str, str]:
    """Every generated block whose recorded results exist, by name."""
    found = {"settings": settings_section()}
    if (RESULTS / "serving.json").exists():
        serving = json.loads((RESULTS / "serving.json").read_text())
        training_path = RESULTS / "training.json"
        training = json.loads(training_path.read_text()) if training_path.exists() else None
        if "cells" in serving:
            found["bench"] = bench_section(serving, training) + served_default_note(serving.get("model"), SERVING_NOTE)
        else:  # one 6 s window per cell, before the interleaved rounds: its table stays as written
            print(
                "bench/results/serving.json has no interleaved rounds; the bench table is left as is "
                "until `make bench` records them"
            )
    for block, results, module, function in RECORDED_SECTIONS:
        if (RESULTS / results).exists():  # imported only when used: some need the bench extra (matplotlib)
            recorded = json.loads((RESULTS / results).read_text())
            section = getattr(importlib.import_module(module), function)(recorded)
            if block == "gaussian-scales":
                section = model_card.runs_models(recorded.get("runs", {}), model_card.REPOSITORY) + section
            elif isinstance(recorded.get("model"), dict):
                section += served_default_note(recorded["model"], SERVING_NOTE if block == "scaleout" else "")
            found[block] = section
    return found


def update_docs() -> list[Path]:
    """Write every generated block into its page, the model card page and the figures; the pages written."""
    written, generated = [], blocks()
    for page, names in _by_page().items():
        path = DOCS / page
        text = path.read_text()
        for name in names:
            if name in generated:
                text = _replace(text, name, generated[name], page)
        path.write_text(text)
        written.append(path)
    figures = DOCS / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for figure, results in FIGURES.items():
        if (RESULTS / figure).exists() and (RESULTS / results).exists():
            shutil.copyfile(RESULTS / figure, figures / figure)
    if model_card.newest_manifests(model_card.REPOSITORY):
        written.append(model_card.write_page(DOCS / "model-card.md", figures))
    return written


def _by_page() -> dict[str, list[str]]:
    pages: dict[str, list[str]] = {}
    for name, page in PAGES.items():
        pages.setdefault(page, []).append(name)
    return pages


if __name__ == "__main__":
    for written_path in update_docs():
        print(f"updated {written_path.relative_to(REPO) if written_path.is_relative_to(REPO) else written_path}")
