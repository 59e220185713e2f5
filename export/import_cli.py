"""`vae-import`: serve a VAE this project did not train (docs/bring-your-own-vae.md, docs/contract.md).

    vae-import torch MODULE:ATTR OUT_DIR --input-shape C H W --likelihood L --decoder-output O [...]
    vae-import onnx OUT_DIR --encoder E.onnx --decoder D.onnx --likelihood L --decoder-output O [...]

OUT_DIR is a repository version directory (REPO/<name>/<version>), written all or nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.declare import DECODER_OUTPUTS, DeclarationError, Declarations
from export.importing import ImportFailed


def _declarations(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the contract (docs/contract.md)")
    g.add_argument("--name", required=True, help="the model's name in the repository and the URLs")
    g.add_argument("--version", default="1.0.0", help="the model version")
    g.add_argument(
        "--likelihood", required=True, choices=list(DECODER_OUTPUTS), help="p(x|z); none: a deterministic decoder"
    )
    g.add_argument(
        "--decoder-output",
        required=True,
        choices=sorted({o for outputs in DECODER_OUTPUTS.values() for o in outputs}),
        help="what decode returns: logits or probs (bernoulli); mean, or mean with a per-pixel scale (gaussian)",
    )
    g.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="the images the encoder reads")
    g.add_argument(
        "--input-range",
        type=float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LOW", "HIGH"),
        help="the encoder's pixel values: LOW + (HIGH - LOW) * pixel",
    )
    g.add_argument(
        "--input-mean", type=float, nargs="+", default=None, metavar="M", help="with --input-std: (pixel - mean) / std"
    )
    g.add_argument("--input-std", type=float, nargs="+", default=None, metavar="S", help="1 value, or 1 per channel")
    g.add_argument(
        "--posterior", default="logvar", choices=["logvar", "log_scale", "scale"], help="what encode's second output is"
    )
    g.add_argument("--flatten-input", action="store_true", help="encode takes [N, C*H*W]")
    g.add_argument(
        "--output-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="decode returns [N, C*H*W]: reshape it"
    )
    g.add_argument(
        "--sigma", type=float, default=None, help="gaussian decoding its mean only: the fixed sigma, in input values"
    )
    g.add_argument(
        "--resize-filter",
        default="bilinear",
        choices=["nearest", "bilinear", "bicubic", "lanczos", "box"],
        help="how uploaded images of another size are resized",
    )
    m = p.add_argument_group("model card")
    m.add_argument(
        "--score-dir", type=Path, default=None, help="a folder of test images: the model card's ELBO and log p(x)"
    )
    m.add_argument(
        "--calibrate-dir", type=Path, default=None, help="a folder of in-distribution images: calibrates POST /anomaly"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-import", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="source", required=True)
    t = sub.add_parser("torch", help="a PyTorch module with encode and decode methods")
    t.add_argument("target", metavar="MODULE:ATTR", help="a .py file or importable module, and an nn.Module in it")
    t.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    t.add_argument("--weights", type=Path, default=None, help="a state dict to load (torch.save or .safetensors)")
    t.add_argument("--encode", default="encode", help="the method mapping x to (mean, logvar)")
    t.add_argument("--decode", default="decode", help="the method mapping z to the likelihood's parameters")
    t.add_argument(
        "--log-sigma-param", default=None, help="gaussian decoding its mean only: the parameter holding ln sigma"
    )
    _declarations(t)
    o = sub.add_parser("onnx", help="an encoder graph and a decoder graph")
    o.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    o.add_argument("--encoder", type=Path, required=True)
    o.add_argument("--decoder", type=Path, required=True)
    o.add_argument("--prior", type=Path, default=None, help="a prior graph: z -> log_prob, means, logvars, log_weights")
    o.add_argument("--encoder-input", default=None, help="the encoder's image input (default: its only input)")
    o.add_argument("--encoder-outputs", default=None, metavar="MEAN,LOGVAR", help="default: its first two outputs")
    o.add_argument("--decoder-input", default=None, help="the decoder's latent input (default: its only input)")
    o.add_argument("--decoder-outputs", default=None, metavar="NAME[,NAME]", help="default: its first output(s)")
    _declarations(o)
    d = sub.add_parser("diffusers", help="a latent-diffusion autoencoder saved by AutoencoderKL.save_pretrained")
    d.add_argument("directory", type=Path, metavar="DIR", help="config.json and the safetensors weights")
    d.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    d.add_argument("--name", required=True, help="the model's name in the repository and the URLs")
    d.add_argument("--version", default="1.0.0")
    d.add_argument(
        "--image-size", type=int, nargs=2, metavar=("H", "W"), help="what the native routes resize uploads to "
        "(default: the config's sample_size); the remote VAE protocol takes any multiple of the downsampling"
    )  # fmt: skip
    d.add_argument(
        "--sigma", type=float, default=None, help="declare a Gaussian decoder with this sigma (in [-1, 1] values); "
        "default: no likelihood, so the routes that score answer 409"
    )  # fmt: skip
    d.add_argument(
        "--max-size", type=int, default=1024, help="the largest height and width the model takes (sizes.max): the "
        "attention in the middle blocks holds (H*W/f^2)^2 scores per image, 1 GiB at 512 px and f = 4"
    )  # fmt: skip
    d.add_argument("--report", type=Path, default=None, help="a JSON file on how the weights were trained: the "
                   "manifest's training section")  # fmt: skip
    d.add_argument("--score-dir", type=Path, default=None, help="with --sigma: a folder of test images to score")
    d.add_argument("--calibrate-dir", type=Path, default=None, help="with --sigma: a folder to calibrate /anomaly on")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=2)
    return p


def declarations(args: argparse.Namespace) -> Declarations:
    return Declarations(
        name=args.name,
        version=args.version,
        likelihood=args.likelihood,
        decoder_output=args.decoder_output,
        input_shape=tuple(args.input_shape) if args.input_shape else None,
        input_range=(args.input_range[0], args.input_range[1]),
        input_mean=tuple(args.input_mean) if args.input_mean else None,
        input_std=tuple(args.input_std) if args.input_std else None,
        posterior=args.posterior,
        flatten_input=args.flatten_input,
        output_shape=tuple(args.output_shape) if args.output_shape else None,
        sigma=args.sigma,
        log_sigma_param=getattr(args, "log_sigma_param", None),
        resize_filter=args.resize_filter,
        score_dir=args.score_dir,
        calibrate_dir=args.calibrate_dir,
        seed=args.seed,
        threads=args.threads,
    )


def diffusers_declarations(args: argparse.Namespace) -> Declarations:
    gaussian = args.sigma is not None
    return Declarations(
        name=args.name,
        version=args.version,
        likelihood="gaussian" if gaussian else "none",
        decoder_output="mean",
        input_range=(-1.0, 1.0),
        sigma=args.sigma,
        score_dir=args.score_dir,
        calibrate_dir=args.calibrate_dir,
        seed=args.seed,
        threads=args.threads,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        decl = diffusers_declarations(args) if args.source == "diffusers" else declarations(args)
        if args.source == "diffusers":
            from export.import_diffusers import import_diffusers

            size = tuple(args.image_size) if args.image_size else None
            manifest = import_diffusers(args.directory, args.out_dir, decl, size, args.max_size, args.report)
        elif args.source == "torch":
            from export.import_torch import Methods, import_torch  # torch only for this command

            manifest = import_torch(args.target, args.out_dir, decl, args.weights, Methods(args.encode, args.decode))
        else:
            from export.import_onnx import import_onnx

            manifest = import_onnx(
                args.out_dir,
                decl,
                {"encoder": args.encoder, "decoder": args.decoder, "prior": args.prior},
                {
                    "encoder_input": args.encoder_input,
                    "encoder_outputs": args.encoder_outputs,
                    "decoder_input": args.decoder_input,
                    "decoder_outputs": args.decoder_outputs,
                },
            )
    except (DeclarationError, ImportFailed) as exc:
        print(f"vae-import: {exc}", file=sys.stderr)
        return 2
    print(
        f"imported {manifest.name} {manifest.version} to {args.out_dir}: latent size {manifest.latent_dim}, "
        f"likelihood {manifest.likelihood.name}; serve it with "
        f"vae-serve --model-repository {args.out_dir.parent.parent}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
