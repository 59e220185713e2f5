"""`vae-import onnx OUT_DIR --encoder E.onnx --decoder D.onnx [--prior P.onnx]`: a user's graphs as they are.

The graphs' bytes are copied unchanged, so their hashes are the user's (a graph that keeps its weights in
external data files is stored as one file with them, its source files' hashes recorded); the manifest maps their
own input and output names onto the contract's (--encoder-input, --encoder-outputs, --decoder-input,
--decoder-outputs). The loader's checks (model/core/contract.py) run on them before anything is written:
names, float32, ranks, a dynamic batch axis, sizes, determinism and rows that do not depend on their batch.
Torch is not needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.declare import Declarations
from export.importing import (
    Graphs,
    ImportFailed,
    build_manifest,
    open_checked,
    prior_components,
    source_files,
    write_import,
)
from model.core.artifact import OnnxVAE, session_options
from model.core.manifest import Manifest, Source

RANDOM_OPS = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli")


def read_graph(path: Path, flag: str) -> tuple[bytes, Any]:
    """The file's bytes and an onnxruntime session on them, or a refusal naming the flag. A graph that keeps
    its weights in external data files (torch.onnx.export's default) is read with them and stored as one
    file: the service hashes and loads a graph as one byte string. Its source files' hashes are kept."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImportFailed(f"{flag} {path}: cannot read it ({exc.strerror})") from exc
    external = external_files(data)
    if external:
        data = inline_external_data(path, flag, external)
    try:
        session = ort.InferenceSession(data, session_options(1), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own errors
        raise ImportFailed(f"{flag} {path}: onnxruntime cannot load it as an ONNX model: {exc}") from exc
    random = random_nodes(data)
    if random:
        raise ImportFailed(
            f"{flag} {path} holds random nodes ({', '.join(sorted(set(random)))}): a graph must be deterministic. "
            "Export the deterministic part only (the encoder's mean and log-variance; the decoder's parameters) "
            "with the model in eval() mode: the service draws the noise itself, seeded"
        )
    return data, session


def external_files(data: bytes) -> list[str]:
    """The external data files a graph's initializers name (relative to the graph's folder)."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception:  # not ONNX: onnxruntime's refusal below says so
        return []
    found: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return sorted(found)


def inline_external_data(path: Path, flag: str, files: list[str]) -> bytes:
    import onnx

    missing = [name for name in files if not (path.parent / name).is_file()]
    if missing:
        raise ImportFailed(
            f"{flag} {path} keeps its weights in {', '.join(missing)}, not found beside it: copy them next to "
            "the graph (torch.onnx.export writes them as <graph>.onnx.data), or export with external_data=False"
        )
    try:
        model = onnx.load(str(path), load_external_data=True)
        return bytes(model.SerializeToString())
    except Exception as exc:  # onnx's own errors, and protobuf's 2 GB limit
        raise ImportFailed(f"{flag} {path}: cannot read it with its external data ({', '.join(files)}): {exc}") from exc


def random_nodes(data: bytes) -> list[str]:
    import onnx

    graph = onnx.load_from_string(data).graph
    found = [node.op_type for node in graph.node if node.op_type in RANDOM_OPS]
    # Nodes inside subgraphs (If, Loop, Scan) count too.
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += [n.op_type for n in attribute.g.node if n.op_type in RANDOM_OPS]
    return found


def pick(names: list[str], given: str | None, role: str, flag: str, graph: str, position: int) -> str:
    """The graph name playing `role`: the one given, else the one at `position` when the graph's names leave
    no doubt."""
    if given is not None:
        if given not in names:
            raise ImportFailed(f"{flag}: the {graph} graph has no {given!r}; its names are {names}")
        return given
    if position < len(names):
        return names[position]
    raise ImportFailed(f"the {graph} graph has {names}; name its {role} with {flag}")


def bind(decl: Declarations, encoder: Any, decoder: Any, names: dict[str, str | None]) -> Graphs:
    """The graphs' own names for the contract's parts (flags first, else by position), as `Graphs` minus bytes."""
    enc_in = [a.name for a in encoder.get_inputs()]
    enc_out = [a.name for a in encoder.get_outputs()]
    dec_in = [a.name for a in decoder.get_inputs()]
    dec_out = [a.name for a in decoder.get_outputs()]
    image = pick(enc_in, names["encoder_input"], "image input", "--encoder-input", "encoder", 0)
    mean_spread = _pair(names["encoder_outputs"], enc_out)
    z = pick(dec_in, names["decoder_input"], "latent input", "--decoder-input", "decoder", 0)
    count = 2 if "," in decl.decoder_output else 1
    outputs = _outputs(names["decoder_outputs"], dec_out, count)
    return Graphs(b"", b"", (image, *mean_spread), (z, outputs))


def _pair(given: str | None, names: list[str]) -> tuple[str, str]:
    parts = given.split(",") if given else names[:2]
    if len(parts) != 2:
        raise ImportFailed(f"--encoder-outputs MEAN,LOGVAR names two outputs; the encoder graph has {names}")
    for part in parts:
        if part not in names:
            raise ImportFailed(f"--encoder-outputs: the encoder graph has no {part!r}; its outputs are {names}")
    return parts[0], parts[1]


def _outputs(given: str | None, names: list[str], count: int) -> list[str]:
    parts = given.split(",") if given else names[:count]
    if len(parts) != count:
        raise ImportFailed(
            f"--decoder-outputs names {len(parts)} outputs ({parts}); the declared --decoder-output needs {count}. "
            f"The decoder graph's outputs are {names}"
        )
    for part in parts:
        if part not in names:
            raise ImportFailed(f"--decoder-outputs: the decoder graph has no {part!r}; its outputs are {names}")
    return parts


def static_input_shape(session: Any, image: str, flat: bool) -> tuple[int, int, int] | None:
    """(C, H, W) from the encoder's image input, when the graph fixes all three."""
    shape = next(a.shape for a in session.get_inputs() if a.name == image)
    if flat or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return int(shape[1]), int(shape[2]), int(shape[3])


def latent_size(session: Any, decl: Declarations, image: str, mean: str) -> int:
    """D: the mean output's static size, else from one run on a blank image (float32 checked first)."""
    kind = next(a.type for a in session.get_inputs() if a.name == image)
    if kind != "tensor(float)":
        raise ImportFailed(
            f"the encoder input {image!r} is {kind}; the contract is float32 (tensor(float)): export the model "
            "in float32 (model.float())"
        )
    shape = next(a.shape for a in session.get_outputs() if a.name == mean)
    if len(shape) == 2 and isinstance(shape[1], int):
        return int(shape[1])
    channels, height, width = decl.shape
    blank = np.zeros((1, channels * height * width) if decl.flatten_input else (1, channels, height, width), np.float32)
    try:
        return int(np.asarray(session.run([mean], {image: blank})[0]).shape[-1])
    except Exception as exc:  # onnxruntime's own errors: the shape or layout is wrong
        raise ImportFailed(
            f"the encoder cannot run on an image of the declared shape {list(blank.shape)}: {exc}. "
            "Check --input-shape, and --flatten-input for an encoder that takes [N, C*H*W]"
        ) from exc


def import_onnx(
    out_dir: Path, decl: Declarations, paths: dict[str, Path | None], names: dict[str, str | None]
) -> Manifest:
    encoder_path, decoder_path = paths["encoder"], paths["decoder"]
    assert encoder_path is not None and decoder_path is not None  # required flags
    encoder_bytes, encoder = read_graph(encoder_path, "--encoder")
    decoder_bytes, decoder = read_graph(decoder_path, "--decoder")
    bound = bind(decl, encoder, decoder, names)
    if decl.input_shape is None:
        shape = static_input_shape(encoder, bound.encoder_names[0], decl.flatten_input)
        if shape is None:
            raise ImportFailed("the encoder graph does not fix its image's C, H and W: pass --input-shape C H W")
        decl = decl.shaped(shape)
    latent_dim = latent_size(encoder, decl, bound.encoder_names[0], bound.encoder_names[1])
    prior_bytes = components = None
    prior_path = paths.get("prior")
    if prior_path is not None:
        prior_bytes, _ = read_graph(prior_path, "--prior")
        components = prior_components(prior_bytes, latent_dim)
    graphs = Graphs(encoder_bytes, decoder_bytes, bound.encoder_names, bound.decoder_names, prior_bytes, components)
    given = [p for p in (encoder_path, decoder_path, prior_path) if p is not None]
    with_data = [*given, *(p.parent / name for p in given for name in external_files(p.read_bytes()))]
    source = Source(
        tool="vae-import onnx",
        files=source_files(with_data),
        description="ONNX graphs given by the model's author, copied byte for byte (external weights inlined)",
    )
    log_scale = None if decl.sigma is None else float(np.log(decl.sigma))

    def build(staging: Path) -> tuple[Manifest, OnnxVAE]:
        parity = {
            "reference": "the graphs as given: no other implementation to compare with; the loader's checks of "
            "determinism (.repeat) and batch independence (.alone) on seeded inputs",
            "tolerance": 1e-4,
            "max_abs_diff": {"encoder.repeat": 0.0, "decoder.repeat": 0.0},
        }
        manifest = build_manifest(staging, decl, graphs, latent_dim, source, parity, log_scale)
        model = open_checked(staging, manifest, decl.threads)
        figures = model.checks
        parity = {
            **parity,
            "max_abs_diff": {k: v for k, v in figures.items() if k.endswith(".repeat")},
            "batch_max_abs_diff": {k: v for k, v in figures.items() if k.endswith(".alone")},
        }
        return manifest.model_copy(update={"parity": parity}), model

    return write_import(out_dir, decl, build)
