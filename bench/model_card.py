"""The model card page, docs/model-card.md: one card per model in the bundled repository, from its
newest version's manifest (the `vae-eval` metrics the exporter recorded), earlier versions side by
side, with the report's figures. Never typed by hand.

    python -m bench.report   (writes it with the other generated pages)
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from service.registry import version_key

REPOSITORY = Path(__file__).resolve().parent.parent / "artifacts"

# Published figures each likelihood is compared with: (what, nats per image or None, bits/dim or None).
REFERENCES: dict[str, list[tuple[str, float | None, float | None]]] = {
    "bernoulli": [
        ("reference: plain VAE, Gaussian prior (Exemplar VAE paper)", 228.70, None),
        ("reference: VAE, VampPrior (Exemplar VAE paper)", 227.35, None),
        ("reference: VAE, Exemplar prior (Exemplar VAE paper)", 226.75, None),
        ("reference: two stochastic layers (HVAE), VampPrior (Exemplar VAE paper)", 226.72, None),
        ("reference: two stochastic layers (HVAE), Exemplar prior (Exemplar VAE paper)", 226.53, None),
        ("reference: ConvHVAE, Gaussian prior, a decoder about 100 times ours (Exemplar VAE paper)", 225.38, None),
    ],
    "gaussian": [("reference: published flows and autoregressive models on 8-bit Fashion-MNIST (about)", None, 2.9)],
}

# Under a Gaussian decoder an 8-bit pixel costs at least the cross-entropy of its dequantisation noise
# U(0, 1/256) under the best Gaussian for it (mean at the bin's centre, scale (1/256)/sqrt(12)), even when
# the decoder predicts the bin exactly: 0.5 * log2(2 * pi * e / 12) bits.
GAUSSIAN_FLOOR_BITS = 0.5 * math.log2(2 * math.pi * math.e / 12)


def gaussian_pixel_bits(sigma: float) -> float:
    """Expected bits of one 8-bit pixel under N(mean, sigma^2) when its residual has that scale: the
    Gaussian's differential entropy in bits, plus the 8 bits that the 1/256 bin width adds."""
    return 0.5 * math.log2(2 * math.pi * math.e * sigma * sigma) + 8


def reference_margins(nll: float) -> str:
    """The sentence under the Bernoulli card: each reference row the model beats and each it does not,
    with the margin in nats."""
    rows = [(what.split(": ", 1)[1].rsplit(" (", 1)[0], nats) for what, nats, _ in REFERENCES["bernoulli"]]
    if nll >= rows[0][1]:
        return f"**The shipped model does not yet beat the reference: it is {nll - rows[0][1]:.2f} nats short.**"
    return (
        "Against the references, the shipped model is "
        + "; ".join(
            f"{nats - nll:.2f} nats ahead of {name}" if nll < nats else f"{nll - nats:.2f} nats behind {name}"
            for name, nats in rows
        )
        + "."
    )


def model_versions(repository: Path = REPOSITORY) -> list[list[dict]]:
    """Each model's versions' manifests, oldest first; models in name order, the default model first."""
    models = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = sorted(
            (v for v in model_dir.iterdir() if (v / "manifest.json").is_file()), key=lambda v: version_key(v.name)
        )
        if versions:
            models.append([json.loads((v / "manifest.json").read_text()) for v in versions])
    return sorted(models, key=lambda ms: ms[-1]["name"] != "fashion-mnist-vae")


def newest_manifests(repository: Path = REPOSITORY) -> list[dict]:
    """Each model's newest version's manifest, models in name order (the default model first)."""
    return [versions[-1] for versions in model_versions(repository)]


def model_card_section(repository: Path = REPOSITORY) -> str:
    return "\n".join(_card(versions, repository) for versions in model_versions(repository))


def _card(versions: list[dict], repository: Path) -> str:
    """A `vae-export` model's card (its `vae-eval` metrics), or an imported model's (its report, if it ships one)."""
    if "model_config" in versions[-1]["training"]:
        return _one_model(versions)
    return _imported_model(versions[-1], repository)


def served_default(name: str, repository: Path = REPOSITORY) -> str | None:
    """The version of `name` that the bundled repository serves to requests naming none: its highest."""
    for versions in model_versions(repository):
        if versions[-1]["name"] == name:
            return versions[-1]["version"]
    return None


def runs_models(runs: dict[str, str], repository: Path = REPOSITORY) -> str:
    """A line naming the bundled model version each training run (`vae-train --out RUN`) became, if any."""
    made = []
    for name, run in runs.items():
        for versions in model_versions(repository):
            for manifest in versions:
                command = manifest["training"].get("command", [])
                if any(
                    a == "--out" and b.rstrip("/") == str(run).rstrip("/")
                    for a, b in zip(command, command[1:], strict=False)
                ):
                    made.append(f"the {name.replace('_', '-')} run is `{manifest['name']}` {manifest['version']}")
    if not made:
        return ""
    return "Of these runs, " + "; ".join(made) + " (its manifest's training command).\n\n"


PAGE_INTRO = """# Model card

Generated by `python -m bench.report` from each bundled model's newest manifest
(`artifacts/<name>/<version>/manifest.json`, the `vae-eval` metrics the exporter recorded); earlier
versions stand beside it. Do not edit this page by hand.

`fashion-mnist-vae` (the default) has a Bernoulli decoder on binarised pixels: the form the VAE
literature reports on, so its NLL compares with published tables. `fashion-mnist-gaussian` is the
classic VAE of the textbook derivation, a Gaussian decoder p(x|z) = N(x | g(z), sigma^2 I), on
dequantised 8-bit pixels (x = (pixel level + u) / 256, u ~ U(0, 1)): its densities are of the 8-bit
image, so its bits/dim compare with density models of 8-bit images. Both are scored by `vae-eval` on
the exported graphs. `fashion-mnist-autoencoderkl` is a latent-diffusion autoencoder (diffusers'
`AutoencoderKL`, imported with `vae-import diffusers`): a spatial latent and no likelihood, so its card
gives the reconstruction error and the latent's statistics from its training report instead. How each
version was made: [How the shipped models were made](models.md).
"""


def write_page(path: Path, figures: Path, repository: Path = REPOSITORY) -> Path:
    """docs/model-card.md: the intro, each model's card, and its newest version's samples and reconstructions
    (copied into `figures`, named by model and version)."""
    parts = [PAGE_INTRO]
    for versions in model_versions(repository):
        manifest = versions[-1]
        parts.append(_card(versions, repository).replace("### ", "## ", 1))
        report = repository / manifest["name"] / manifest["version"] / "report"
        label = f"`{manifest['name']}` {manifest['version']}"
        shown = []
        for figure, caption in (
            ("samples.png", "samples from the prior"),
            ("reconstructions.png", "test images and their reconstructions"),
        ):
            if (report / figure).exists():
                target = f"{manifest['name']}-{manifest['version']}-{figure}"
                figures.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(report / figure, figures / target)
                shown.append(
                    f"![{manifest['name']} {manifest['version']}: {caption}]"
                    f"({figures.name}/{target})\n\n{label}: {caption}.\n"
                )
        if shown:
            held = (
                "The full report (`report.json`, latent traversals, a 2-D latent map, learning curves)"
                if "model_config" in manifest["training"]
                else "The report (`report.json`)"
            )
            parts.append(
                "\n".join(shown) + f"\n{held} is in `artifacts/{manifest['name']}/{manifest['version']}/report/`.\n"
            )
    path.write_text("\n".join(parts))
    return path


def prior_name(manifest: dict) -> str:
    prior = manifest.get("prior")
    if not prior:
        return "N(0, I)"
    return {"mog": "mixture of {} Gaussians", "vamp": "VampPrior, {} pseudo-inputs"}[prior["name"]].format(
        prior["components"]
    )


def objective_name(manifest: dict) -> str:
    train_cfg = manifest["training"]["train_config"]
    if train_cfg.get("objective", "elbo") == "iwae-dreg":
        return f"IWAE bound, k={train_cfg['samples']}, DReG gradients"
    return "ELBO"


def epoch_list(epochs: list[int]) -> str:
    """[6, 7, 8, 9] -> "6 to 9"; a list with gaps is given whole."""
    consecutive = epochs == list(range(epochs[0], epochs[0] + len(epochs)))
    return f"{epochs[0]} to {epochs[-1]}" if consecutive and len(epochs) > 2 else ", ".join(map(str, epochs))


def scored_images(manifest: dict) -> tuple[int, int | None]:
    """How many test images a version's figures are of, and of how many (None: all of them)."""
    return manifest["metrics"]["images"], manifest["metrics"].get("of_images")


def latent_text(manifest: dict) -> str:
    levels = manifest.get("levels")
    lower = f" over a lower level of {levels['lower_latent_dim']}" if levels else ""
    return f"{manifest['latent_dim']} latent dimensions{lower}"


def _one_model(all_versions: list[dict]) -> str:
    """The newest version's card; with earlier versions scored on the same test images, their figures in
    columns beside it (a version scored on a prefix of the test set, `vae-eval --limit`, is compared with
    nothing scored on other images, the published figures included)."""
    manifest = all_versions[-1]
    subset = scored_images(manifest)
    versions, apart = [], []
    for v in all_versions:
        (versions if scored_images(v) == subset else apart).append(v)
    m, parity, training = manifest["metrics"], manifest["parity"], manifest["training"]
    cfg, train_cfg = training["model_config"], training["train_config"]
    likelihood = manifest["likelihood"]["name"]
    scale = f" ({cfg['gaussian_scale'].replace('_', '-')} learned sigma)" if likelihood == "gaussian" else ""
    drawn = "binarised" if likelihood == "bernoulli" else "dequantised"
    averaged = training.get("averaged")
    if averaged:
        chosen = (
            f"the mean of the weights at the ends of epochs {epoch_list(averaged['epochs'])} of "
            f"{train_cfg['epochs']} (`{' '.join(averaged['command'])}`)"
        )
    else:
        chosen = (
            "the epoch with the best bound on a held-out validation split"
            if train_cfg.get("validation")
            else "the checkpoint with the best test ELBO"
        ) + f" (epoch {training['epoch']} of {train_cfg['epochs']})"
    start = (
        f", starting from `{train_cfg['init_from']}` (SHA-256 {train_cfg['init_sha256'][:12]}...)"
        if train_cfg.get("init_from")
        else ""
    )
    columns = list(reversed(versions))  # newest first

    def row(label: str, cells) -> str:
        """One table row: a (nats, bits/dim) pair of cells per version."""
        return f"| {label} | " + " | ".join(f"{nats} | {bits}" for nats, bits in (cells(v) for v in columns)) + " |"

    lines = [
        f"### `{manifest['name']}` {manifest['version']}"
        + (f", beside {', '.join(v['version'] for v in reversed(versions[:-1]))}" if len(versions) > 1 else ""),
        "",
        f"{cfg['arch']} encoder, {cfg['decoder']} decoder, {latent_text(manifest)}, "
        f"{likelihood} likelihood{scale}, prior {prior_name(manifest)}, trained on the {objective_name(manifest)}; "
        f"{chosen} on {training['dataset']}{start} "
        f"(`{' '.join(training['command'])}`).",
        "",
        f"| test set ({m['images']:,} images, {drawn} once, seed {train_cfg['test_binarize_seed']}) | "
        + " | ".join(f"{v['version']}: nats | bits/dim" for v in columns)
        + " |",
        "|---|" + "---|---|" * len(columns),
    ]
    if len(versions) > 1:
        lines += [
            row("prior", lambda v: (prior_name(v), "")),
            row("training objective", lambda v: (objective_name(v), "")),
        ]
    lines += [
        row(
            "negative ELBO",
            lambda v: (f"{v['metrics']['nll_elbo_nats']:.2f}", f"{v['metrics']['bits_per_dim_elbo']:.4f}"),
        ),
        row("reconstruction term E_q[log p(x\\|z)]", lambda v: (f"{v['metrics']['reconstruction']:.2f}", "")),
        row(
            "KL(q(z\\|x) \\|\\| p(z))" + (", both levels" if manifest.get("levels") else ""),
            lambda v: (f"{v['metrics']['kl']:.2f}", ""),
        ),
        row(
            f"**NLL, IWAE k={m['iwae_k']}**",
            lambda v: (f"**{v['metrics']['nll_nats']:.2f}**", f"**{v['metrics']['bits_per_dim']:.4f}**"),
        ),
    ]
    for what, nats, bits in [] if m.get("of_images") else REFERENCES.get(likelihood, []):
        cells = ["" if nats is None else f"{nats:.2f}", "" if bits is None else f"{bits:.1f}"]
        lines.append(f"| {what} | " + " | ".join(cells + [""] * (2 * len(columns) - 2)) + " |")
    lines.append("")
    if m.get("of_images"):
        lines.append(
            f"Scored on the first {m['images']:,} of the {m['of_images']:,} test images (`vae-eval --limit`): "
            "not the whole test set's figures, so not compared with the published ones"
            + (f", nor with {', '.join(v['version'] for v in apart)}, scored on other images." if apart else ".")
        )
    elif likelihood == "bernoulli":
        lines.append(reference_margins(m["nll_nats"]))
    else:
        reference = REFERENCES["gaussian"][0][2]
        sigma = manifest["likelihood"].get("parameters", {})
        spread = ""
        if "sigma_mean" in sigma:
            spread = (
                f" (here from {sigma['sigma_min']:.4f} to {sigma['sigma_max']:.3f}): a pixel whose residual "
                f"fits sigma = {sigma['sigma_mean']:.3f}, the mean, costs "
                f"{gaussian_pixel_bits(sigma['sigma_mean']):.1f} bits"
            )
        lines.append(
            "Densities are of the 8-bit image (dequantisation bin 1/256): "
            f"{m['bits_per_dim'] - reference:.2f} bits/dim behind the flows and autoregressive models. "
            "A Gaussian decoder stays behind them for three reasons. "
            f"Every pixel costs at least {GAUSSIAN_FLOOR_BITS:.3f} bits, even when the decoder predicts its bin "
            "exactly: that is the best Gaussian's cross-entropy on the bin's uniform noise, with its scale at the "
            "(1/256)/sqrt(12) floor, where a discrete model pays nothing for a certain pixel. The pixels are "
            "independent given z, so the detail a 32-dimensional latent does not carry (texture, exact edges) is paid "
            f"for with wide Gaussians{spread}. And each pixel's "
            "density is one unimodal bump that also spends mass outside [0, 1]."
        )
    lines += [
        "",
        f"Reproduce: `{' '.join(m['command'])}`. Parity of the ONNX graphs with torch on {parity['images']} "
        f"test images and {parity['latents']} latents: max |difference| "
        f"{max(parity['max_abs_diff'].values()):.1e}.",
        "",
    ]
    return "\n".join(lines)


def _imported_model(manifest: dict, repository: Path) -> str:
    """An imported model's card: where it came from, its latent and likelihood, and, when the version ships a
    training report (report/report.json, as model/train_autoencoder_kl.py writes it), its test reconstruction
    error and latent statistics."""
    source, parity = manifest.get("source") or {}, manifest["parity"]
    latent = manifest.get("latent_shape") or [manifest["latent_dim"]]
    diffusion = manifest.get("diffusion")
    scaling = ""
    if diffusion:
        shifted = "z" if diffusion.get("shift_factor") is None else f"(z - {diffusion['shift_factor']:.4f})"
        scaling = f"; a diffusion model sees {shifted} x {diffusion['scaling_factor']:.4f}"
    deterministic = manifest["likelihood"]["name"] == "none"
    lines = [
        f"### `{manifest['name']}` {manifest['version']}",
        "",
        f"Imported with `{source.get('tool', 'vae-import')}`: {source.get('description', '')}. Latent "
        f"{' x '.join(map(str, latent))}{scaling}; likelihood {manifest['likelihood']['name']}"
        + (" (a deterministic decoder: the routes that score answer 409)." if deterministic else "."),
        "",
    ]
    path = repository / manifest["name"] / manifest["version"] / "report" / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    if {"test", "latents", "invocations"} <= set(report):
        test, latents = report["test"], report["latents"]
        stats = latents["posterior_sample"]
        commands = ", then ".join(f"`{i['command']}`" for i in report["invocations"])
        done, planned = report.get("epochs_done", len(report["history"])), report.get("epochs_planned")
        epochs = f"{done} of {planned} planned epochs" if planned and planned != done else f"{done} epochs"
        lines += [
            f"| test set ({test['images']:,} images), decoded posterior mean, on [0, 1] pixels | |",
            "|---|---|",
            f"| MSE | {test['mse']:.5f} |",
            f"| PSNR (of the set's MSE) | {test['psnr_db']:.2f} dB |",
            f"| mean absolute error | {test['l1']:.4f} |",
            "| latent mean per channel (sampled) | " + ", ".join(f"{v:.3f}" for v in stats["channel_mean"]) + " |",
            "| latent std per channel (sampled) | " + ", ".join(f"{v:.3f}" for v in stats["channel_std"]) + " |",
            f"| scaling factor, 1 / std of all sampled latents | {latents['scaling_factor']:.4f} |",
            "",
            f"Trained by {commands}: {epochs}, {report['training_seconds'] / 60:.1f} min of training and "
            f"{report['wall_seconds'] / 60:.1f} min in all.",
            "",
        ]
    lines += [f"Parity of the ONNX graphs: max |difference| {max(parity['max_abs_diff'].values()):.1e}.", ""]
    return "\n".join(lines)
