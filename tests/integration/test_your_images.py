"""A user's own colour images, end to end with the defaults: 300 RGB 32x32 PNGs (crops of scikit-image's
bundled immunohistochemistry slide, a colour texture), `vae-train --dataset folder` with no flag but a short
--epochs, `vae-export`, `vae-serve`; then POST /anomaly with its own defaults and its map, over HTTP and
through Triton's own client. The fpr default the server chose is never refused, and a pasted defect is where
the map is hottest."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from model.core.preprocess import PreprocessContract, bytes_to_array
from tests.conftest import REPO
from tests.integration.conftest import Server

pytest.importorskip("torch", reason="vae-train needs the train extra (make install-train)")
skimage_data = pytest.importorskip("skimage.data")
httpclient = pytest.importorskip("tritonclient.http")

SIZE, COUNT, EPOCHS = 32, 300, 12
DEFECT = (slice(10, 18), slice(12, 20))  # rows, columns of the pasted patch


def crops(count: int, rows: tuple[int, int], seed: int) -> np.ndarray:
    """(count, 32, 32, 3) uint8: 64x64 crops of the slide's `rows`, halved (box filter)."""
    slide = skimage_data.immunohistochemistry()
    rng = np.random.default_rng(seed)
    out = np.empty((count, SIZE, SIZE, 3), np.uint8)
    for i in range(count):
        y, x = rng.integers(rows[0], rows[1] - 64), rng.integers(0, slide.shape[1] - 64)
        out[i] = np.asarray(Image.fromarray(slide[y : y + 64, x : x + 64]).resize((SIZE, SIZE), Image.BOX))
    return out


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def auroc(values: np.ndarray, mask: np.ndarray) -> float:
    """The share of (defect, other) pixel pairs the map orders right: the image's own pixel-level AUROC."""
    inside, outside = values[mask], values[~mask]
    return float((inside[:, None] > outside[None, :]).mean() + 0.5 * (inside[:, None] == outside[None, :]).mean())


def run(*argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("your-images")
    folder = root / "good"
    folder.mkdir()
    for i, image in enumerate(crops(COUNT, (0, 380), seed=0)):  # the slide's top rows
        (folder / f"{i:03d}.png").write_bytes(png(image))
    train = run(
        "model.train", "--dataset", "folder", "--data-dir", str(folder), "--epochs", str(EPOCHS), "--no-progress",
        "--out", str(root / "run"),
    )  # fmt: skip
    export = run(
        "export.cli", str(root / "run" / "best.pt"), str(root / "models" / "slides" / "1.0.0"), "--name", "slides"
    )
    return root, train, export


@pytest.fixture(scope="module")
def server(trained):
    root, _, _ = trained
    with Server(root, VAE_MODEL_REPOSITORY=str(root / "models")) as running:
        yield running


@pytest.fixture(scope="module")
def uploads() -> tuple[list[bytes], np.ndarray]:
    """Two unseen crops (the slide's bottom rows), the second with a green patch pasted on."""
    good, other = crops(2, (400, 512), seed=1)
    defective = other.copy()
    defective[DEFECT] = (40, 220, 60)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[DEFECT] = True
    return [png(good), png(defective)], mask


def test_the_defaults_are_chosen_from_the_folder_and_said(trained):
    root, train, export = trained
    out = train.stdout
    assert "gaussian, on 216 folder images of 3x32x32, 54 held out for the anomaly calibration" in out
    assert "image: RGB 32x32: the most common shape of the folder's images (300 of 300)" in out
    assert "likelihood: gaussian with a per-pixel scale from the decoder: colour images" in out
    # 36 reference images: the default false-positive rate is 0.05, said at export time
    assert "the default false-positive rate is 0.05, not 0.01" in export.stderr
    manifest = json.loads((root / "models" / "slides" / "1.0.0" / "manifest.json").read_text())
    spec = manifest["anomaly"]
    assert spec["fpr_default"] == 0.05 and spec["calibration"]["split"] == "held out of training"
    assert spec["calibration"]["reference_images"] == 36 and "fpr_note" in spec["calibration"]
    assert manifest["likelihood"]["name"] == "gaussian" and manifest["likelihood"]["parameters"]["scale"] == "decoder"
    assert set(manifest["training"]["train_config"]["extra"]["defaults"]) == {"image", "architecture", "likelihood"}


def test_anomaly_answers_with_its_own_defaults_and_a_map_that_finds_the_defect(server, uploads):
    images, mask = uploads
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    plain = httpx.post(f"{server.url}/v1/models/slides/anomaly", files=files, timeout=60)
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["fpr"] == 0.05 and body["reference_images"] == 36 and "1/36" in body["fpr_note"]
    assert [r["index"] for r in body["results"]] == [0, 1] and "map" not in body["results"][0]
    mapped = httpx.post(f"{server.url}/v1/models/slides/anomaly?map=true", files=files, timeout=60).json()
    assert mapped["map"]["samples"] >= 1 and [r["score"] for r in mapped["results"]] == [
        r["score"] for r in body["results"]
    ]
    good, defective = (np.asarray(r["map"]) for r in mapped["results"])
    assert good.shape == defective.shape == (SIZE, SIZE)
    assert defective[mask].mean() > 0.95 > defective[~mask].mean()  # the patch is where the map is hot
    assert auroc(defective, mask) > 0.9 and defective[mask].mean() > np.quantile(good, 0.99)
    heat = Image.open(io.BytesIO(base64.b64decode(mapped["results"][1]["map_png"])))
    assert heat.size == (SIZE, SIZE) and heat.mode == "RGB"
    asked = httpx.post(f"{server.url}/v1/models/slides/anomaly?fpr=0.01", files=files, timeout=60)
    assert asked.status_code == 422 and "1/36" in asked.text  # a rate the user asks for is checked


def test_tritonclient_gets_the_map_as_an_output_of_m_anomaly(server, uploads):
    images, mask = uploads
    contract = PreprocessContract(input_shape=(3, SIZE, SIZE))
    pixels = np.stack([bytes_to_array(data, contract) for data in images])
    client = httpclient.InferenceServerClient(url=server.url.split("://", 1)[1])
    try:
        image = httpclient.InferInput("image", list(pixels.shape), "FP32")
        image.set_data_from_numpy(pixels, binary_data=True)
        wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name in ("score", "is_anomaly", "map")]
        result = client.infer("slides.anomaly", [image], outputs=wanted)
    finally:
        client.close()
    maps = result.as_numpy("map")
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert result.get_response()["parameters"]["fpr"] == 0.05
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    native = httpx.post(f"{server.url}/v1/models/slides/anomaly?map=true", files=files, timeout=60).json()
    np.testing.assert_allclose(maps, [r["map"] for r in native["results"]], atol=1e-4)
    assert auroc(maps[1], mask) > 0.9
