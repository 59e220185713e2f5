"""bench/model_card.py on an imported model (no `vae-eval` metrics): its card comes from its manifest and, when the
version ships one, its training report. (Beside tests/unit/bench/test_model_card.py, which covers vae-export's.)"""

import json
import shutil

from bench import model_card
from tests.conftest import REPO
from tests.unit.bench.test_model_card import manifest, write

SHIPPED = REPO / "artifacts" / "fashion-mnist-autoencoderkl" / "1.0.0"


def test_an_imported_autoencoder_gets_its_reports_reconstruction_error_and_latent_statistics(tmp_path):
    version = tmp_path / "fashion-mnist-autoencoderkl" / "1.0.0"
    version.mkdir(parents=True)
    shutil.copyfile(SHIPPED / "manifest.json", version / "manifest.json")
    shutil.copytree(SHIPPED / "report", version / "report")
    write(tmp_path, manifest("fashion-mnist-vae", "3.1.0", "bernoulli", 226.4))
    report = json.loads((SHIPPED / "report" / "report.json").read_text())

    card = model_card.model_card_section(tmp_path)
    imported = card[card.index("### `fashion-mnist-autoencoderkl` 1.0.0") :]
    assert card.index("### `fashion-mnist-vae`") < card.index("### `fashion-mnist-autoencoderkl`")
    assert "Latent 4 x 7 x 7" in imported and "likelihood none" in imported
    assert f"| MSE | {report['test']['mse']:.5f} |" in imported
    assert f"| PSNR (of the set's MSE) | {report['test']['psnr_db']:.2f} dB |" in imported
    assert f"{report['latents']['scaling_factor']:.4f}" in imported
    assert f"`{report['invocations'][0]['command']}`" in imported

    page = model_card.write_page(tmp_path / "docs" / "model-card.md", tmp_path / "docs" / "figures", tmp_path)
    assert "(figures/fashion-mnist-autoencoderkl-1.0.0-reconstructions.png)" in page.read_text()


def test_an_imported_model_without_a_report_gets_its_manifests_card(tmp_path):
    version = tmp_path / "imported" / "1.0.0"
    version.mkdir(parents=True)
    raw = json.loads((SHIPPED / "manifest.json").read_text())
    (version / "manifest.json").write_text(json.dumps({**raw, "name": "imported"}))
    card = model_card.model_card_section(tmp_path)
    assert "### `imported` 1.0.0" in card and "Parity of the ONNX graphs" in card and "| MSE |" not in card
