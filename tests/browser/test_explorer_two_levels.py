"""The explorer on a two-level VAE (issue 33): a tiny one trained and exported here, served on its own.
The page shows what the API answers for it: the top level's posterior on the chart, the scores of both
levels (/elbo's two-level estimators), the anomaly score, the reconstruction through both levels'
posterior means, and samples and traversals decoded through z1."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from model.core.preprocess import array_to_png
from tests.browser.test_explorer import png_levels, post_image
from tests.unit.export.exports import TWO_LEVELS as TWO
from tests.unit.export.exports import train_and_export


@pytest.fixture(scope="module")
def two_level_page(driver, tmp_path_factory):
    """The page against a server of the tiny two-level VAE (always one started here: a container or pod
    under test serves the bundled models only), and test images as PNG files."""
    from tests.browser.conftest import Explorer, browser_paths
    from tests.integration.conftest import Server

    browser_paths()
    tmp = tmp_path_factory.mktemp("two-level-explorer")
    directory, dataset = train_and_export(tmp, TWO, "--calibration-count", "100", epochs=2)
    files = []
    for i, image in enumerate(dataset.test[:2]):
        files.append(tmp / f"test-{i}.png")
        files[-1].write_bytes(array_to_png(image))
    server = Server(tmp, VAE_MODEL_DIR=str(directory))
    try:
        server.wait()
        driver.get("about:blank")
        driver.get_log("browser")
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp)})
        explorer = Explorer(driver, server.url, tmp)
        explorer.open()
        yield explorer, files
        errors = explorer.console_errors()
        assert not errors, f"browser console errors: {errors}"
    finally:
        server.stop()


def test_the_page_shows_what_the_api_answers_for_a_two_level_vae(two_level_page):
    from selenium.webdriver.common.keys import Keys

    page, files = two_level_page
    assert page.upload(files[0]) == "done"
    k = int(page.find("iwae-k").get_attribute("value"))
    with httpx.Client(base_url=page.url, timeout=60) as client:
        encoded = post_image(client, "/encode", files[0])["results"][0]
        elbo = post_image(client, "/elbo", files[0], k=k, seed=0)["results"][0]
        anomaly = post_image(client, "/anomaly", files[0])["results"][0]
        reconstruction = png_levels(
            post_image(client, "/reconstruct", files[0], format="json")["images"][0]["png_base64"]
        )
    bars = page.find("latent-chart").find_elements("css selector", "rect.bar")
    assert [float(bar.get_attribute("data-value")) for bar in bars] == encoded["mean"]
    # the second level's chart, under the first: q(z1 | x, z2)'s means, to read (nothing to pick)
    assert page.find("lower-level").is_displayed()
    lower = page.find("lower-chart").find_elements("css selector", "rect.bar")
    assert [float(bar.get_attribute("data-value")) for bar in lower] == encoded["lower"]["mean"]
    assert len(lower) == TWO.lower_latent_dim and all(bar.get_attribute("role") is None for bar in lower)
    for element, key in (("score-elbo", "elbo"), ("score-kl", "kl"), ("score-iwae", "log_likelihood")):
        assert float(page.value(element)) == elbo[key], element
    assert elbo["log_likelihood"] >= elbo["elbo"]  # the k-sample bound over both levels, above the ELBO
    assert float(page.value("anomaly-score")) == anomaly["score"]
    np.testing.assert_array_equal(page.levels(page.find("recon-canvas")), reconstruction)

    # Samples and a traversal: z2 decoded through p(z1 | z2)'s mean, as /sample and /decode answer.
    seed_input = page.find("sample-seed")
    seed_input.clear()
    seed_input.send_keys("5")
    assert page.run("sample-panel", lambda: seed_input.send_keys(Keys.ENTER)) == "done"
    tiles = page.tiles("sample-grid")
    steps = page.find("traverse-steps")
    steps.clear()
    steps.send_keys("3")
    assert page.run("traverse-panel", lambda: page.find("traverse-button").click()) == "done"
    strip = page.tiles("traverse-strip")
    dim = int(page.find("traverse-dim").get_attribute("value"))
    with httpx.Client(base_url=page.url, timeout=60) as client:
        temperature = float(page.find("sample-temperature-value").text)
        samples = client.get(
            "/sample", params={"n": len(tiles), "seed": 5, "temperature": temperature, "format": "json"}
        ).json()["samples"]
        rows = [
            [*encoded["mean"][:dim], encoded["mean"][dim] + offset, *encoded["mean"][dim + 1 :]]
            for offset in (-3.0, 0.0, 3.0)
        ]
        decoded = client.post("/decode", params={"format": "json"}, json={"z": rows}).json()["images"]
    assert len(tiles) == len(samples) and all(tile.shape == (8, 8) for tile in tiles)
    assert all(np.array_equal(tile, png_levels(s["png_base64"])) for tile, s in zip(tiles, samples, strict=True))
    assert [a.tolist() for a in strip] == [png_levels(image["png_base64"]).tolist() for image in decoded]
