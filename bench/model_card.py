"""The README's model card: one block per model in the bundled repository, from its newest version's
manifest (the `vae-eval` metrics the exporter recorded), side by side. Never typed by hand.

    python -m bench.report   (writes it with the other generated sections)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from service.registry import version_key

REPOSITORY = Path(__file__).resolve().parent.parent / "artifacts"

# Published figures each likelihood is compared with: (what, nats per image or None, bits/dim or None).
REFERENCES: dict[str, list[tuple[str, float | None, float | None]]] = {
    "bernoulli": [("reference: plain VAE, Gaussian prior (Exemplar VAE paper)", 228.70, None)],
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


def newest_manifests(repository: Path = REPOSITORY) -> list[dict]:
    """Each model's newest version's manifest, models in name order (the default model first)."""
    manifests = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [v for v in model_dir.iterdir() if (v / "manifest.json").is_file()]
        if versions:
            newest = max(versions, key=lambda v: version_key(v.name))
            manifests.append(json.loads((newest / "manifest.json").read_text()))
    return sorted(manifests, key=lambda m: m["name"] != "fashion-mnist-vae")


def model_card_section(repository: Path = REPOSITORY) -> str:
    return "\n".join(_one_model(m) for m in newest_manifests(repository))


def _one_model(manifest: dict) -> str:
    m, parity, training = manifest["metrics"], manifest["parity"], manifest["training"]
    cfg, train_cfg = training["model_config"], training["train_config"]
    likelihood = manifest["likelihood"]["name"]
    scale = f" ({cfg['gaussian_scale'].replace('_', '-')} learned sigma)" if likelihood == "gaussian" else ""
    drawn = "binarised" if likelihood == "bernoulli" else "dequantised"
    lines = [
        f"### `{manifest['name']}` {manifest['version']}", "",
        f"{cfg['arch']} encoder, {cfg['decoder']} decoder, {manifest['latent_dim']} latent dimensions, "
        f"{likelihood} likelihood{scale}; the checkpoint with the best test ELBO (epoch {training['epoch']} of "
        f"{train_cfg['epochs']}) on {training['dataset']} (`{' '.join(training['command'])}`).", "",
        f"| test set ({m['images']:,} images, {drawn} once, seed {train_cfg['test_binarize_seed']}) | nats | "
        "bits/dim |", "|---|---|---|",
        f"| negative ELBO | {m['nll_elbo_nats']:.2f} | {m['bits_per_dim_elbo']:.4f} |",
        f"| reconstruction term E_q[log p(x\\|z)] | {m['reconstruction']:.2f} | |",
        f"| KL(q(z\\|x) \\|\\| N(0, I)) | {m['kl']:.2f} | |",
        f"| **NLL, IWAE k={m['iwae_k']}** | **{m['nll_nats']:.2f}** | **{m['bits_per_dim']:.4f}** |",
    ]
    for what, nats, bits in REFERENCES.get(likelihood, []):
        lines.append(f"| {what} | {'' if nats is None else f'{nats:.2f}'} | {'' if bits is None else f'{bits:.1f}'} |")
    lines.append("")
    if likelihood == "bernoulli":
        reference = REFERENCES["bernoulli"][0][1]
        lines.append(f"The shipped model beats the reference by {reference - m['nll_nats']:.2f} nats."
                     if m["nll_nats"] < reference else
                     f"**The shipped model does not yet beat the reference: it is {m['nll_nats'] - reference:.2f} "
                     "nats short.**")
    else:
        reference = REFERENCES["gaussian"][0][2]
        sigma = manifest["likelihood"].get("parameters", {})
        spread = ""
        if "sigma_mean" in sigma:
            spread = (f" (here from {sigma['sigma_min']:.4f} to {sigma['sigma_max']:.3f}): a pixel whose residual "
                      f"fits sigma = {sigma['sigma_mean']:.3f}, the mean, costs {gaussian_pixel_bits(sigma['sigma_mean']):.1f}"
                      " bits")
        lines.append(
            f"Densities are of the 8-bit image (dequantisation bin 1/256): {m['bits_per_dim'] - reference:.2f} bits/dim "
            "behind the flows and autoregressive models. A Gaussian decoder stays behind them for three reasons. "
            f"Every pixel costs at least {GAUSSIAN_FLOOR_BITS:.3f} bits, even when the decoder predicts its bin "
            "exactly: that is the best Gaussian's cross-entropy on the bin's uniform noise, with its scale at the "
            "(1/256)/sqrt(12) floor, where a discrete model pays nothing for a certain pixel. The pixels are "
            "independent given z, so the detail a 32-dimensional latent does not carry (texture, exact edges) is paid "
            f"for with wide Gaussians{spread}. And each pixel's "
            "density is one unimodal bump that also spends mass outside [0, 1].")
    lines += ["",
              f"Reproduce: `{' '.join(m['command'])}`. Parity of the ONNX graphs with torch on {parity['images']} "
              f"test images and {parity['latents']} latents: max |difference| "
              f"{max(parity['max_abs_diff'].values()):.1e}.", ""]
    return "\n".join(lines)
