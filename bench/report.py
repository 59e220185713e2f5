"""Write the README's generated sections from recorded results: never typed by hand.

    python -m bench.report   (also run by `make bench`)

- the benchmark table, from bench/results/serving.json and training.json (medians of the
  interleaved rounds, with their range);
- the model card, one block per bundled model from its newest manifest (bench/model_card.py);
- the Gaussian decoder's shared against per-pixel sigma, from bench/results/gaussian_scales.json;
- the anomaly benchmark's table, from bench/results/anomaly.json (`python -m bench.anomaly`);
- the prior-versus-importance table, from bench/results/seed_argument.json (`python -m bench.seed_argument`);
- the training throughput table, from bench/results/train_throughput.json (`python -m bench.train_throughput`);
- the scale-out table, from bench/results/scaleout.json (`python -m bench.scaleout`);
- the configuration list, from service/settings.py's Settings (names, defaults, limits, descriptions)
  and the access log's recorded cost in bench/results/inprocess.json.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Literal, get_args, get_origin

from bench import model_card

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results"


def _replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def bench_section(serving: dict, training: dict | None = None) -> str:
    """The benchmark block from a full run's results: each cell and ratio as the median of the
    interleaved rounds with its range (min-max), and the targets judged on the medians."""
    cells, ratios, m, plan = serving["cells"], serving["ratios"], serving["machine"], serving["plan"]
    git, model = serving["git"], serving["model"]
    tree = "" if git["dirty"] is False else " (with uncommitted changes)" if git["dirty"] else " (git state unknown)"
    lines = [f"Measured by `make bench` on {m['cores']} cores ({m['cpu']}), {m['time']}, at commit "
             f"`{(git['commit'] or 'unknown')[:12]}`{tree}, model `{model['name']}` {model['version']} (encoder "
             f"`{model['encoder_sha256'][:12]}`, decoder `{model['decoder_sha256'][:12]}`), with {m['wrk']} as the "
             f"load generator in its own process. Every server ran throughout; in each of {plan['rounds']} rounds "
             f"every cell got one {plan['window_s']} s window after a {plan['warmup_s']} s warm-up, in a shuffled "
             f"order (seed {plan['seed']}). Requests/s and latency (ms): the median of the rounds, "
             f"(min-max) in brackets:", "",
             "| server, route | c=1 | c=8 | c=32 | c=64 | p50 / p90 / p99 at c=32 |", "|---|---|---|---|---|---|"]
    rows = [("product", "encode_1_raw", "product `POST /encode`, 1 PNG"),
            ("minimal", "encode_1_raw", "minimal FastAPI + onnxruntime `/encode`"),
            ("ceiling", "encode_1_raw", "ceiling: async no-op POST"),
            ("naive", "encode_1_raw", "naive: torch eager `/encode`"),
            ("product", "encode_16_multipart", "product `POST /encode`, 16 PNGs multipart"),
            ("product", "sample_16_png", "product `GET /sample?n=16` (PNG grid)"),
            ("product", "elbo_k1", "product `POST /elbo?k=1`"),
            ("product", "elbo_k100", "product `POST /elbo?k=100`")]
    for kind, route, label in rows:
        rps = [cells[f"{kind}/{route}/c{c}"]["rps"] for c in (1, 8, 32, 64)]
        r32 = cells[f"{kind}/{route}/c32"]
        latency = " / ".join(f"{r32[p]['median'] / 1000:.1f}" for p in ("p50_us", "p90_us", "p99_us"))
        lines.append(f"| {label} | {' | '.join(_spread(s, '.0f') for s in rps)} | {latency} "
                     f"({r32['p99_us']['min'] / 1000:.1f}-{r32['p99_us']['max'] / 1000:.1f}) |")
    ip, cold, rss, efficiency = serving["in_process"], serving["cold_start"], serving["memory"], serving["efficiency"]
    met = serving["targets_met"]
    x = lambda name: _spread(ratios[name], ".2f", "x")  # noqa: E731
    v2_rows = [] if "v2_binary_vs_encode_c32" not in ratios else [
        f"| open inference protocol, encoder graph at c=32 vs `/encode`: binary tensors (>= 0.9x) / JSON tensors | "
        f"{x('v2_binary_vs_encode_c32')} / {x('v2_json_vs_encode_c32')} | "
        f"{_yes(met['v2 binary encoder >= 0.9x /encode (c32)'])} |"]
    lines += ["",
              "| target (ratios taken within each round: median (min-max)) | measured | met |", "|---|---|---|",
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
              f"serialising one `/encode` response {ip['response_serialise_us']:.0f} us."]
    repo = serving.get("repository")
    if repo is not None:
        lines += ["", f"Model repository: a live swap (`POST /v2/repository/models/{{name}}/load` of a new version: "
                      f"loaded, hash-checked, warmed up, then given the traffic) took {repo['swap_median_s']:.2f} s "
                      f"(median of {len(repo['swap_s'])}); each extra model of the bundled model's size added "
                      f"{repo['rss_per_extra_model_median_mb']:.0f} MB of resident memory (median of "
                      f"{len(repo['rss_per_extra_model_mb'])}; {repo['rss_one_model_mb']:.0f} MB with one model)."]
    if training is not None:
        lines += ["", f"Training (default model, Fashion-MNIST, {training['threads']} threads): "
                  f"{training['seconds_per_epoch']:.1f} s per epoch, {training['images_per_second']:.0f} images/s "
                  f"(`{training['command']}`)."]
    return "\n".join(lines) + "\n"


def _spread(summary: dict, spec: str, unit: str = "") -> str:
    """'median (min-max)' of one summarised cell metric or ratio."""
    return (f"{format(summary['median'], spec)}{unit} "
            f"({format(summary['min'], spec)}-{format(summary['max'], spec)}{unit})")


def settings_section() -> str:
    """One row per `Settings` field, so a new setting appears in the README when this runs."""
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
        lines += ["", f"The access log's cost, from `bench/results/inprocess.json` (`{run['command']}`, "
                      f"{run['machine']['time']}): {run['access_log_cost_us']:.0f} us a request on `/encode`, "
                      f"against {run['product_us']:.0f} us for the request without it."]
    return "\n".join(lines) + "\n"


def _allowed(field) -> str:
    """The field's limits as text: its annotated bounds, or its choices."""
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    bounds = [f"{symbols[key]} {getattr(rule, key)}" for rule in field.metadata for key in symbols
              if hasattr(rule, key)]
    if get_origin(field.annotation) is Literal:
        return ", ".join(get_args(field.annotation))
    if field.annotation is bool:
        return "true, false"
    return ", ".join(bounds) or "-"


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


# README block, its recorded results file in bench/results/, and the function that turns them into the block.
RECORDED_SECTIONS = (
    ("anomaly", "anomaly.json", "bench.anomaly", "anomaly_section"),
    ("gaussian-scales", "gaussian_scales.json", "bench.gaussian_scales", "section"),
    ("seed-argument", "seed_argument.json", "bench.seed_argument", "argument_section"),
    ("scaleout", "scaleout.json", "bench.scaleout", "scaleout_section"),
    ("train-throughput", "train_throughput.json", "bench.train_throughput", "throughput_section"),
)


def update_readme() -> None:
    text = README.read_text()
    if model_card.newest_manifests(model_card.REPOSITORY):
        text = _replace(text, "model-card", model_card.model_card_section())
    if (RESULTS / "serving.json").exists():
        serving = json.loads((RESULTS / "serving.json").read_text())
        training_path = RESULTS / "training.json"
        training = json.loads(training_path.read_text()) if training_path.exists() else None
        if "cells" in serving:
            text = _replace(text, "bench", bench_section(serving, training))
        else:  # one 6 s window per cell, before the interleaved rounds: its table stays as written
            print("bench/results/serving.json has no interleaved rounds; the bench table is left as is "
                  "until `make bench` records them")
    for block, results, module, function in RECORDED_SECTIONS:
        if (RESULTS / results).exists():  # imported only when used: some need the bench extra (matplotlib)
            section = getattr(importlib.import_module(module), function)
            text = _replace(text, block, section(json.loads((RESULTS / results).read_text())))
    text = _replace(text, "settings", settings_section())
    README.write_text(text)


if __name__ == "__main__":
    update_readme()
    print(f"updated {README}")
