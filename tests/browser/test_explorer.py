"""The explorer in headless Chromium: what the page shows is what the API answers, for the same
image, seed and latents; API errors are shown as the API's message; no console errors.
Screenshots land in build/explorer/ (docs/explorer.png is copied from there)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import BARE_MODEL, DEFAULT_MODEL
from tests.conftest import REPO

MODEL_PATH = f"/v1/models/{DEFAULT_MODEL}/versions/2.0.0"


def api(explorer_url: str) -> httpx.Client:
    return httpx.Client(base_url=explorer_url, timeout=60)


def post_image(client: httpx.Client, path: str, image: Path, **params) -> dict:
    response = client.post(path, params=params, files=[("file", (image.name, image.read_bytes(), "image/png"))])
    assert response.status_code == 200, response.text
    return response.json()


def png_levels(base64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(base64_png))).convert("L"))


def test_an_uploaded_image_shows_what_the_api_answers_for_it(page, explorer_url, image_files, test_images):
    assert page.upload(image_files[0]) == "done"
    # The input as the model sees it: the test image's own grey levels, pixel for pixel.
    np.testing.assert_array_equal(
        page.levels(page.find("input-canvas")), np.rint(test_images[0][0] * 255).astype(np.uint8)
    )
    k = int(page.find("iwae-k").get_attribute("value"))
    with api(explorer_url) as client:
        recon = post_image(client, f"{MODEL_PATH}/reconstruct", image_files[0], format="json")
        elbo = post_image(client, f"{MODEL_PATH}/elbo", image_files[0], k=k, seed=0)["results"][0]
        anomaly = post_image(client, f"{MODEL_PATH}/anomaly", image_files[0])
        encoded = post_image(client, f"{MODEL_PATH}/encode", image_files[0])["results"][0]
        card = client.get(MODEL_PATH).json()
    mean = encoded["mean"]
    reconstruction = png_levels(recon["images"][0]["png_base64"])
    np.testing.assert_array_equal(page.levels(page.find("recon-canvas")), reconstruction)
    tile = page.find("recon-view").find_element("css selector", "button.tile")
    np.testing.assert_array_equal(page.download(tile, f"{DEFAULT_MODEL}-2.0.0-reconstruction.png"), reconstruction)
    for element, key in (
        ("score-elbo", "elbo"),
        ("score-kl", "kl"),
        ("score-reconstruction", "reconstruction"),
        ("score-iwae", "log_likelihood"),
    ):
        assert float(page.value(element)) == elbo[key], element
        assert page.find(element).text == f"{elbo[key]:.2f} nats", element
    result = anomaly["results"][0]
    assert float(page.value("anomaly-score")) == result["score"]
    assert page.find("anomaly-score").text == f"{result['score']:.2f}"
    assert page.find("anomaly-percentile").text == f"{100 * result['percentile']:.1f}%"
    verdict = "anomalous" if result["is_anomaly"] else "typical"
    assert page.find("anomaly-verdict").text.startswith(verdict)
    bars = page.find("latent-chart").find_elements("css selector", "rect.bar")
    assert [float(bar.get_attribute("data-value")) for bar in bars] == mean
    assert "lower" not in encoded and not page.find("lower-level").is_displayed()  # one level: no second chart
    # Until a dimension is picked, the traversal starts at the one the encoder is surest of.
    assert page.find("traverse-dim").get_attribute("value") == str(int(np.argmin(encoded["logvar"])))
    assert page.find("card-latent-dim").text == str(card["latent_dim"]) == str(len(mean))
    assert page.find("card-likelihood").text == card["likelihood"]["name"]
    assert page.find("card-nll").text.startswith(f"{card['metrics']['nll_nats']:.2f} nats")
    page.screenshot("explorer-upload-1280x800")
    page.screenshot("explorer-full", full_page=True)


def test_the_same_seed_gives_the_same_grid_and_the_apis_pixels(page, explorer_url):
    from selenium.webdriver.common.keys import Keys

    def sample(seed: int) -> list[np.ndarray]:
        seed_input = page.find("sample-seed")
        seed_input.clear()
        seed_input.send_keys(str(seed))
        assert page.run("sample-panel", lambda: seed_input.send_keys(Keys.ENTER)) == "done"  # submits the form
        assert page.find("sample-grid").get_attribute("data-seed") == str(seed)
        return page.tiles("sample-grid")

    page.find("sample-temperature").send_keys(Keys.ARROW_LEFT * 4)  # by keyboard: 1.00 -> 0.80
    assert page.find("sample-temperature-value").text == "0.80"
    first, other, again = sample(7), sample(8), sample(7)
    assert len(first) == 16 and all(tile.shape == (28, 28) for tile in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=False))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=False))
    with api(explorer_url) as client:
        answer = client.get(
            f"{MODEL_PATH}/sample", params={"n": 16, "seed": 7, "temperature": 0.8, "format": "json"}
        ).json()
    assert all(
        np.array_equal(tile, png_levels(s["png_base64"])) for tile, s in zip(first, answer["samples"], strict=False)
    )
    grid = page.download(page.find("sample-download"), f"{DEFAULT_MODEL}-2.0.0-sample.png")
    assert grid.shape == (4 * 28 + 5 * 2,) * 2  # 4 x 4 tiles, 2 px apart and around
    np.testing.assert_array_equal(grid[2:30, 2:30], first[0])
    np.testing.assert_array_equal(grid[-30:-2, -30:-2], again[-1])


def test_interpolation_runs_from_one_image_to_the_other(page, explorer_url, image_files):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    assert page.upload(image_files[0]) == "done"
    page.find("set-a").click()
    assert page.upload(image_files[1]) == "done"
    page.find("set-b").click()
    page.wait.until(lambda _: page.find("interpolate-button").is_enabled(), "A and B never set")
    steps = page.find("interpolate-steps")
    steps.clear()
    steps.send_keys("6")
    strips = {}
    for path in ("linear", "spherical"):
        Select(page.find("interpolate-path")).select_by_value(path)
        assert page.run("interpolate-panel", lambda: steps.send_keys(Keys.ENTER)) == "done"
        strips[path] = page.tiles("interpolate-strip")
    with api(explorer_url) as client:
        ends = [
            png_levels(post_image(client, f"{MODEL_PATH}/reconstruct", image, format="json")["images"][0]["png_base64"])
            for image in image_files[:2]
        ]
    for path, strip in strips.items():
        assert len(strip) == 6, path
        # The ends decode the two means exactly: each is its image's reconstruction.
        np.testing.assert_array_equal(strip[0], ends[0])
        np.testing.assert_array_equal(strip[-1], ends[1])
    assert any(
        not np.array_equal(a, b) for a, b in zip(strips["linear"][1:-1], strips["spherical"][1:-1], strict=False)
    )
    # Every panel filled (the docs' picture, docs/explorer.png, comes from
    # test_a_tour_of_the_served_default_for_the_docs_picture).
    for panel, button in (("sample-panel", "sample-button"), ("traverse-panel", "traverse-button")):
        assert page.run(panel, page.find(button).click) == "done"
    page.screenshot("explorer-tour", full_page=True)


def test_traversal_moves_the_dimension_chosen_on_the_chart(page, explorer_url, image_files):
    from selenium.webdriver.common.keys import Keys

    assert page.upload(image_files[2]) == "done"
    bars = page.find("latent-chart").find_elements("css selector", "rect.bar")
    dim = int(np.argmax([abs(float(bar.get_attribute("data-value"))) for bar in bars]))
    bars[dim].send_keys(Keys.ENTER)  # the bars are focusable; Enter picks the dimension
    assert page.find("traverse-dim").get_attribute("value") == str(dim)
    steps = page.find("traverse-steps")
    steps.clear()
    steps.send_keys("5")
    assert page.run("traverse-panel", lambda: page.find("traverse-button").click()) == "done"
    strip = page.tiles("traverse-strip")
    with api(explorer_url) as client:
        mean = post_image(client, f"{MODEL_PATH}/encode", image_files[2])["results"][0]["mean"]
        rows = []
        for offset in (-3.0, -1.5, 0.0, 1.5, 3.0):  # the page's range +-3 in 5 steps
            z = list(mean)
            z[dim] += offset
            rows.append(z)
        decoded = client.post(f"{MODEL_PATH}/decode", params={"format": "json"}, json={"z": rows}).json()
    expected = [png_levels(image["png_base64"]) for image in decoded["images"]]
    assert len(strip) == 5 and all(np.array_equal(a, b) for a, b in zip(strip, expected, strict=False))
    assert not np.array_equal(strip[0], strip[-1])


def test_a_file_that_is_not_an_image_shows_the_apis_message(page, explorer_url, tmp_path):
    page.allowed_errors.append("the server responded with a status of 400")  # the requests it provokes
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"these are notes, not a PNG\n" * 4)
    assert page.upload(notes) == "error"
    with api(explorer_url) as client:
        answer = client.post(
            f"{MODEL_PATH}/preprocess", files=[("file", (notes.name, notes.read_bytes(), "image/png"))]
        )
    assert answer.status_code == 400
    shown = page.find("analysis-error")
    assert shown.is_displayed() and shown.text == answer.json()["error"]["message"]
    assert page.find("input-view").find_elements("css selector", "canvas") == []
    page.screenshot("explorer-api-error")


def test_another_model_and_version_are_picked_and_a_missing_card_entry_is_said(page, image_files):
    from selenium.webdriver.support.ui import Select

    models = [option.get_attribute("value") for option in Select(page.find("model-select")).options]
    if BARE_MODEL not in models:
        pytest.skip(f"the server (VAE_BASE_URL) does not serve the test repository's {BARE_MODEL}")
    assert Select(page.find("model-select")).first_selected_option.text == DEFAULT_MODEL
    versions = Select(page.find("version-select"))
    assert [o.text for o in versions.options] == ["1.0.0", "2.0.0"] and versions.first_selected_option.text == "2.0.0"
    assert page.upload(image_files[0]) == "done"
    assert page.run("analysis-panel", lambda: versions.select_by_value("1.0.0")) == "done"  # analysed again
    assert page.find("analysis-panel").get_attribute("data-model") == f"{DEFAULT_MODEL} 1.0.0"
    assert page.run("analysis-panel", lambda: Select(page.find("model-select")).select_by_value(BARE_MODEL)) == "done"
    assert page.find("analysis-panel").get_attribute("data-model") == f"{BARE_MODEL} 0.1.0"
    assert page.find("card-nll").text == "not recorded" and page.find("card-latent-dim").text == "32"
    # The analysis ran again on the bare model: scores, and /anomaly's own 409 message in its place.
    page.allowed_errors.append("the server responded with a status of 409")
    assert page.find("score-elbo").text.endswith("nats")
    anomaly_error = page.find("anomaly-error")
    assert anomaly_error.is_displayed() and "calibrat" in anomaly_error.text
    assert page.find("analysis-error").is_displayed() is False


@pytest.mark.parametrize("width, height", [(1280, 800), (390, 844)])
def test_the_page_fits_the_screen_width(page, image_files, width, height):
    page.open(width, height)
    assert page.upload(image_files[0]) == "done"
    assert page.run("sample-panel", page.find("sample-button").click) == "done"
    overflow = page.driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow} px wider than a {width} px screen"
    recon = page.find("recon-canvas").rect
    assert recon["width"] >= min(150, width / 3), f"the reconstruction is {recon['width']} px wide"
    page.screenshot(f"explorer-{width}x{height}", full_page=True)


def test_the_latent_paths_in_the_pages_own_module(page):
    """latent.js, run in the browser: the ends, the spherical path's norm, the traversal's one dimension."""
    result = page.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('./latent.js').then((m) => {
          const a = [3, 0, 0], b = [0, 3, 0];
          const norm = (v) => Math.hypot(...v);
          done({
            linearEnds: [m.interpolate(a, b, 5, 'linear')[0], m.interpolate(a, b, 5, 'linear')[4]],
            sphericalEnds: [m.slerp(a, b, 0), m.slerp(a, b, 1)],
            sphericalNorms: m.interpolate(a, b, 5, 'spherical').map(norm),
            linearMidNorm: norm(m.lerp(a, b, 0.5)),
            parallel: m.slerp([1, 1], [2, 2], 0.5),
            traverse: m.traverse([0.5, -1], 1, 2, 3),
          });
        }, (error) => done({ error: String(error) }));
    """)
    assert "error" not in result, result
    assert result["linearEnds"] == [[3, 0, 0], [0, 3, 0]]
    np.testing.assert_allclose(result["sphericalEnds"], [[3, 0, 0], [0, 3, 0]], atol=1e-12)
    np.testing.assert_allclose(result["sphericalNorms"], 3.0, rtol=1e-12)  # on the circle, not through it
    assert result["linearMidNorm"] == pytest.approx(3 / np.sqrt(2))
    assert result["parallel"] == [1.5, 1.5]  # same direction: the straight line
    assert result["traverse"] == [[0.5, -3], [0.5, -1], [0.5, 1]]


def test_a_dropped_image_is_analysed_like_an_upload(page, image_files, test_images):
    """A drop event carrying the file, as the browser makes one when a file is dragged onto the zone."""
    page.run(
        "analysis-panel",
        lambda: page.driver.execute_script(
            """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
        document.getElementById('drop-zone').dispatchEvent(
          new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
    """,
            base64.b64encode(image_files[3].read_bytes()).decode(),
        ),
    )
    assert page.find("analysis-panel").get_attribute("data-state") == "done"
    np.testing.assert_array_equal(
        page.levels(page.find("input-canvas")), np.rint(test_images[3][0] * 255).astype(np.uint8)
    )


def test_a_drawing_is_analysed(page):
    from selenium.webdriver.common.action_chains import ActionChains

    pad = page.find("draw-pad")
    page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)
    strokes = ActionChains(page.driver).move_to_element_with_offset(pad, -60, -80).click_and_hold()
    for _ in range(8):
        strokes = strokes.move_by_offset(0, 20)
    strokes.release().perform()
    assert page.run("analysis-panel", page.find("draw-use").click) == "done"
    seen = page.levels(page.find("input-canvas"))  # a vertical stroke, left of centre, on black
    assert seen.shape == (28, 28) and seen[:, :14].max() > 200 and seen[:, 16:].max() == 0
    assert page.find("score-elbo").text.endswith("nats")


@pytest.fixture(scope="module")
def bundled_page(driver, tmp_path_factory):
    """The page against the bundled repository (artifacts/), as `make serve` serves it: the default model's
    highest version, with its learned prior."""
    from tests.browser.conftest import Explorer
    from tests.integration.conftest import serving as serve

    tmp = tmp_path_factory.mktemp("bundled-explorer")
    with serve(tmp, VAE_MODEL_REPOSITORY=str(REPO / "artifacts")) as url:
        driver.get("about:blank")
        driver.get_log("browser")
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp)})
        explorer = Explorer(driver, url, tmp)
        explorer.open()
        yield explorer
        errors = explorer.console_errors()
        assert not errors, f"browser console errors: {errors}"


def test_the_latent_caption_names_the_served_models_own_prior(bundled_page):
    """The caption under the latent means says the card's prior: a mixture for 3.x, never N(0, 1) beside it."""
    page = bundled_page
    with api(page.url) as client:
        card = client.get("/v1/model").json()
    caption = page.find("latent-prior").text
    if card["prior"]["name"] == "standard_normal":
        assert caption == "the prior is N(0, I), each dimension N(0, 1)"
    else:
        assert "N(0, 1)" not in caption and str(card["prior"]["components"]) in caption
        assert card["prior"]["name"] in caption


def test_a_tour_of_the_served_default_for_the_docs_picture(bundled_page):
    """Every panel filled on the served default model: build/explorer/explorer-default.png, which
    docs/explorer.png is a copy of (the picture names the model and version it shows)."""
    from selenium.webdriver.common.keys import Keys

    page = bundled_page
    samples = REPO / "samples"
    assert page.upload(samples / "shirt.png") == "done"
    page.find("set-a").click()
    assert page.upload(samples / "sneaker.png") == "done"
    page.find("set-b").click()
    page.wait.until(lambda _: page.find("interpolate-button").is_enabled(), "A and B never set")
    steps = page.find("interpolate-steps")
    steps.clear()
    steps.send_keys("8")
    assert page.run("interpolate-panel", lambda: steps.send_keys(Keys.ENTER)) == "done"
    for panel, button in (("sample-panel", "sample-button"), ("traverse-panel", "traverse-button")):
        assert page.run(panel, page.find(button).click) == "done"
    with api(page.url) as client:
        card = client.get("/v1/model").json()
    assert (
        page.find("analysis-panel").get_attribute("data-model") == f"{card['model']['name']} {card['model']['version']}"
    )
    page.screenshot("explorer-default", full_page=True)


def test_a_spatial_latent_is_drawn_as_its_channels_and_the_missing_likelihood_is_said(bundled_page):
    """The bundled AutoencoderKL: its latent [4, 7, 7] as four 7 x 7 channel images under the chart; the page
    does not ask it for scores (its card says likelihood none) and says why, while the rest is shown."""
    from selenium.webdriver.support.ui import Select

    page = bundled_page
    name = "fashion-mnist-autoencoderkl"
    Select(page.find("model-select")).select_by_value(name)
    page.wait.until(lambda _: page.find("card-likelihood").text == "none", "the autoencoder's card never showed")
    # Not the tour's last image: a file input sends no change event for the file it already holds.
    assert page.upload(REPO / "samples" / "trouser.png") == "done"
    maps = page.find("latent-maps").find_elements("css selector", "canvas")
    assert [(int(m.get_attribute("width")), int(m.get_attribute("height"))) for m in maps] == [(7, 7)] * 4
    with api(page.url) as client:
        mean = client.post(
            f"/v1/models/{name}/encode", files={"file": ("s.png", (REPO / "samples" / "trouser.png").read_bytes())}
        ).json()["results"][0]["mean"]
    first = np.array(mean[:49]).reshape(7, 7)
    expected = np.round(127.5 + 127.5 * first / np.abs(first).max())
    assert np.abs(page.levels(maps[0]).astype(float) - expected).max() <= 1
    assert "has no likelihood (a deterministic decoder)" in page.find("elbo-error").text
    assert "has no likelihood" in page.find("anomaly-error").text
