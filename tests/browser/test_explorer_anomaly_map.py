"""The explorer's anomaly map ("show where"): with the box checked (the default) the page asks
POST /anomaly?map=true and shows the API's heatmap over the image at the thumbnails' size, captioned
with the map's highest percentile; unchecked, it asks without the map and shows none. A model
calibrated before maps existed still shows its score and says why there is no map; a default
false-positive rate coarser than 0.01 is noted."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import BARE_MODEL, FEW_REFERENCES_MODEL, PRE_MAP_MODEL
from tests.integration.repository_fixtures import DEFAULT_MODEL

MODEL_PATH = f"/v1/models/{DEFAULT_MODEL}/versions/2.0.0"
SQUARE = (slice(2, 9), slice(2, 9))  # rows, columns of the pasted square: the corner, black in these images
PNG_DATA_URL = "data:image/png;base64,"


def post_anomaly(url: str, model_path: str, image: Path, **params) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60) as client:
        return client.post(
            f"{model_path}/anomaly", params=params, files=[("file", (image.name, image.read_bytes(), "image/png"))]
        )


def decoded(data_url: str) -> Image.Image:
    assert data_url.startswith(PNG_DATA_URL), data_url[:40]
    return Image.open(io.BytesIO(base64.b64decode(data_url.removeprefix(PNG_DATA_URL))))


@pytest.fixture
def defect_image(tmp_path, test_images) -> Path:
    """Fashion-MNIST test image 0 (an ankle boot on black) with a bright 7 x 7 square pasted in its corner."""
    from tests.integration.conftest import png

    pixels = test_images[0].copy()
    pixels[(0, *SQUARE)] = 1.0
    path = tmp_path / "fashion-mnist-test-0-square.png"
    path.write_bytes(png(pixels))
    return path


def anomaly_requests(page) -> list[str]:
    """The URLs of the page's /anomaly requests so far, oldest first."""
    return [
        url
        for url in page.driver.execute_script(
            "return performance.getEntriesByType('resource').map((entry) => entry.name)"
        )
        if re.search(r"/anomaly(\?|$)", url)
    ]


def asks_for_map(url: str) -> bool:
    return parse_qs(urlsplit(url).query).get("map") == ["true"]


def overlays(page) -> list:
    return page.find("anomaly-map-view").find_elements("css selector", "img")


def caption_percentile(page) -> float:
    match = re.search(r"highest pixel percentile ([0-9.]+)", page.find("anomaly-map-caption").text)
    assert match, page.find("anomaly-map-caption").text
    return float(match.group(1))


def select_model(page, name: str) -> None:
    from selenium.webdriver.support.ui import Select

    models = [option.get_attribute("value") for option in Select(page.find("model-select")).options]
    if name not in models:
        pytest.skip(f"the server (VAE_BASE_URL) does not serve the test repository's {name}")
    assert page.run("model-panel", lambda: Select(page.find("model-select")).select_by_value(name)) == "done"


def test_the_map_shows_where_a_pasted_square_is_and_unchecking_asks_for_none(page, explorer_url, defect_image):
    toggle = page.find("anomaly-map-toggle")
    assert toggle.is_selected(), "the map is asked for by default"
    assert page.upload(defect_image) == "done"
    assert page.find("anomaly-panel").get_attribute("data-state") == "done"
    assert asks_for_map(anomaly_requests(page)[-1])
    answer = post_anomaly(explorer_url, MODEL_PATH, defect_image, map="true").json()
    with httpx.Client(base_url=explorer_url, timeout=60) as client:
        height, width = client.get(MODEL_PATH).json()["input"]["shape"][1:]
    result = answer["results"][0]
    expected_map = np.asarray(result["map"])

    # The overlay: the API's heatmap, a PNG of the model's input size, shown crisply at the thumbnails' size.
    [overlay] = overlays(page)
    assert page.find("anomaly-map-figure").is_displayed()
    page.wait.until(lambda _: page.driver.execute_script("return arguments[0].complete", overlay), "never loaded")
    shown = decoded(overlay.get_attribute("src"))
    assert shown.format == "PNG" and shown.size == (width, height) and shown.mode == "RGB"
    assert page.driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay) == [
        width,
        height,
    ]
    api_png = np.asarray(decoded(PNG_DATA_URL + result["map_png"]).convert("RGB"), dtype=int)
    assert np.abs(np.asarray(shown.convert("RGB"), dtype=int) - api_png).max() <= 1
    assert overlay.value_of_css_property("image-rendering") == "pixelated"
    thumbnail = page.find("input-view").find_element("css selector", ".tile").rect
    assert abs(overlay.rect["width"] - thumbnail["width"]) <= 1, (overlay.rect, thumbnail)
    assert abs(overlay.rect["height"] - thumbnail["height"]) <= 1, (overlay.rect, thumbnail)

    # The caption: the map's highest percentile, and where it is first reached, in the pasted square.
    percentile = caption_percentile(page)
    assert 0.0 <= percentile <= 1.0
    assert percentile == pytest.approx(expected_map.max(), abs=1e-4)
    y, x = np.unravel_index(np.argmax(expected_map), expected_map.shape)
    caption = page.find("anomaly-map-caption")
    assert (int(caption.get_attribute("data-x")), int(caption.get_attribute("data-y"))) == (x, y)
    rows, columns = SQUARE
    assert rows.start - 2 <= y < rows.stop + 2 and columns.start - 2 <= x < columns.stop + 2, (x, y)
    assert f"{percentile:.4f}" in overlay.get_attribute("title")
    # The score beside it is the API's, map or no map.
    assert float(page.value("anomaly-score")) == pytest.approx(result["score"])
    assert not page.find("anomaly-fpr-note").is_displayed() and not page.find("anomaly-map-note").is_displayed()
    page.panel_screenshot("analysis-panel", "explorer-anomaly-map")

    # Unchecked: the anomaly request again, without the map; no overlay, the score kept.
    before = len(anomaly_requests(page))
    assert page.run("anomaly-panel", toggle.click) == "done"
    requests = anomaly_requests(page)
    assert len(requests) == before + 1 and not asks_for_map(requests[-1])
    assert overlays(page) == [] and not page.find("anomaly-map-figure").is_displayed()
    assert page.find("anomaly-map-caption").text == ""
    plain = post_anomaly(explorer_url, MODEL_PATH, defect_image).json()["results"][0]
    assert "map" not in plain
    assert float(page.value("anomaly-score")) == plain["score"]
    # Checked again: the overlay is back.
    assert page.run("anomaly-panel", toggle.click) == "done"
    assert asks_for_map(anomaly_requests(page)[-1]) and len(overlays(page)) == 1


def test_an_image_analysed_with_the_box_unchecked_asks_for_no_map(page, image_files):
    toggle = page.find("anomaly-map-toggle")
    toggle.click()  # nothing analysed yet: no request, the next analysis asks as the box says
    assert not toggle.is_selected()
    assert page.upload(image_files[1]) == "done"
    assert page.find("anomaly-panel").get_attribute("data-state") == "done"
    [request] = anomaly_requests(page)
    assert not asks_for_map(request)
    assert overlays(page) == [] and not page.find("anomaly-map-figure").is_displayed()
    assert page.find("anomaly-score").text != ""


def test_a_model_calibrated_before_maps_shows_its_score_and_the_apis_reason(page, explorer_url, defect_image):
    select_model(page, PRE_MAP_MODEL)
    page.allowed_errors.append("the server responded with a status of 409")  # the map=true request it answers
    assert page.upload(defect_image) == "done"
    assert page.find("anomaly-panel").get_attribute("data-state") == "done"
    refused = post_anomaly(explorer_url, f"/v1/models/{PRE_MAP_MODEL}", defect_image, map="true")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_anomaly_map"
    note = page.find("anomaly-map-note")
    assert note.is_displayed() and note.text == f"No anomaly map: {refused.json()['error']['message']}"
    assert overlays(page) == [] and not page.find("anomaly-map-figure").is_displayed()
    assert not page.find("anomaly-error").is_displayed()
    score = post_anomaly(explorer_url, f"/v1/models/{PRE_MAP_MODEL}", defect_image).json()["results"][0]["score"]
    assert float(page.value("anomaly-score")) == score
    requests = anomaly_requests(page)
    assert asks_for_map(requests[-2]) and not asks_for_map(requests[-1])
    page.panel_screenshot("analysis-panel", "explorer-anomaly-no-map")


def test_a_model_without_calibration_shows_the_apis_message_as_before(page, explorer_url, defect_image):
    select_model(page, BARE_MODEL)
    page.allowed_errors.append("the server responded with a status of 409")
    assert page.upload(defect_image) == "done"
    assert page.find("anomaly-panel").get_attribute("data-state") == "error"
    answer = post_anomaly(explorer_url, f"/v1/models/{BARE_MODEL}", defect_image, map="true").json()
    assert answer["error"]["code"] == "no_anomaly_calibration"
    error = page.find("anomaly-error")
    assert error.is_displayed() and error.text == answer["error"]["message"]
    assert page.find("anomaly-scores").text == "" and overlays(page) == []
    assert not page.find("anomaly-map-note").is_displayed()


def test_a_default_false_positive_rate_coarser_than_one_percent_is_noted(page, explorer_url, defect_image):
    select_model(page, FEW_REFERENCES_MODEL)
    assert page.upload(defect_image) == "done"
    answer = post_anomaly(explorer_url, f"/v1/models/{FEW_REFERENCES_MODEL}", defect_image, map="true").json()
    assert answer["fpr"] > 0.01 and answer["fpr_note"]
    note = page.find("anomaly-fpr-note")
    assert note.is_displayed() and answer["fpr_note"].rstrip(".") in note.text
    assert page.find("anomaly-verdict").text.endswith(f"at a {100 * answer['fpr']:.1f}% false-positive rate")
    assert len(overlays(page)) == 1 and 0.0 <= caption_percentile(page) <= 1.0
    page.panel_screenshot("analysis-panel", "explorer-anomaly-fpr-note")
