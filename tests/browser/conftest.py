"""The explorer in a real headless Chromium (Debian's chromium and chromium-driver, through Selenium),
against a real server: `serving()` starts one on a small model repository made here, or uses
VAE_BASE_URL. Skipped, saying why, where Chromium or its driver is missing."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO
from tests.integration.conftest import serving, test_images  # noqa: F401 (test_images: a fixture, shared)
from tests.integration.repository_fixtures import DEFAULT_MODEL, shipped_model_dir, write_version_policy

SCREENSHOTS = REPO / "build" / "explorer"
TIMEOUT_S = 60  # a shared 2-core machine runs IWAE with k = 1000 in the page's first analysis
SERVING_FILES = ("manifest.json", "encoder.onnx", "decoder.onnx", "anomaly.json")
BARE_MODEL = "explorer-bare"  # a model card without metrics or anomaly calibration
PRE_MAP_MODEL = "explorer-pre-map"  # an anomaly calibration made before anomaly maps existed
FEW_REFERENCES_MODEL = "explorer-few-references"  # 50 reference images: a default fpr coarser than 0.01


def browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        missing = " and ".join(name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path)
        pytest.skip(
            f"the browser tests need Chromium and its driver; {missing} not found "
            "(apt-get install chromium chromium-driver)"
        )
    return chromium, driver


def copy_version(
    source: Path,
    repository: Path,
    name: str,
    version: str,
    bare: bool = False,
    calibration: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """The serving files of `source` as REPOSITORY/<name>/<version>/, the manifest relabelled (it does not
    hash itself); `bare` drops its metrics and anomaly calibration, as an older export has neither;
    `calibration` edits anomaly.json's content in place (the manifest then lists the edited file's hash)."""
    target = repository / name / version
    target.mkdir(parents=True)
    for file in SERVING_FILES:
        shutil.copy(source / file, target / file)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    if bare:
        manifest["metrics"] = {}
        manifest.pop("anomaly", None)
        (target / "anomaly.json").unlink()
    elif calibration is not None:
        content = json.loads((target / "anomaly.json").read_text())
        calibration(content)
        data = (json.dumps(content, separators=(",", ":")) + "\n").encode()
        (target / "anomaly.json").write_bytes(data)
        manifest["anomaly"]["sha256"] = hashlib.sha256(data).hexdigest()
        if "map" not in content:
            manifest["anomaly"]["calibration"].pop("map", None)
        manifest["anomaly"]["calibration"]["reference_images"] = len(content["reference"])
        manifest["anomaly"]["calibration"]["smallest_fpr"] = 1 / len(content["reference"])
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture(scope="session")
def explorer_url(tmp_path_factory):
    """Two versions of the shipped model (2.0.0 the default), a bare copy of it under another name, and two
    copies whose anomaly calibrations are older (no map) and smaller (50 reference images)."""
    browser_paths()  # skip before paying for the server's start-up
    tmp = tmp_path_factory.mktemp("explorer")
    source = shipped_model_dir()
    for version in ("1.0.0", "2.0.0"):
        copy_version(source, tmp / "repository", DEFAULT_MODEL, version)
    write_version_policy(tmp / "repository", DEFAULT_MODEL, {"all": {}})  # the default serves the latest only
    copy_version(source, tmp / "repository", BARE_MODEL, "0.1.0", bare=True)
    copy_version(source, tmp / "repository", PRE_MAP_MODEL, "0.1.0", calibration=lambda c: c.pop("map"))
    copy_version(
        source,
        tmp / "repository",
        FEW_REFERENCES_MODEL,
        "0.1.0",
        calibration=lambda c: c.update(reference=c["reference"][::200]),  # 10,000 -> 50, still sorted
    )
    with serving(tmp, VAE_MODEL_REPOSITORY=str(tmp / "repository")) as url:
        yield url


@pytest.fixture(scope="session")
def driver():
    pytest.importorskip("selenium", reason="the browser tests need selenium (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--force-device-scale-factor=1",
        "--disable-gpu",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield browser
    finally:
        browser.quit()


class Explorer:
    """The page, as a test drives it: panels finish requests (data-runs), canvases hold pixels."""

    def __init__(self, driver, url: str, downloads: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url, self.downloads = driver, url, downloads
        self.wait = WebDriverWait(driver, TIMEOUT_S)
        self.allowed_errors: list[str] = []  # console messages a test expects (an API error it provokes)

    def open(self, width: int = 1280, height: int = 800) -> None:
        self.driver.set_window_size(width, height)
        self.driver.get(f"{self.url}/")
        self.until_state("model-panel", "done")

    def find(self, element_id: str):
        return self.driver.find_element("id", element_id)

    def runs(self, panel: str) -> int:
        return int(self.find(panel).get_attribute("data-runs") or 0)

    def until_state(self, panel: str, *states: str) -> str:
        self.wait.until(
            lambda _: self.find(panel).get_attribute("data-state") in states, f"{panel} never reached {states}"
        )
        return self.find(panel).get_attribute("data-state")

    def run(self, panel: str, action) -> str:
        """Do `action`, wait for the panel's next finished request, return its state (done or error)."""
        before = self.runs(panel)
        action()
        self.wait.until(lambda _: self.runs(panel) > before, f"{panel} never finished a request")
        return self.find(panel).get_attribute("data-state")

    def upload(self, path: Path) -> str:
        return self.run("analysis-panel", lambda: self.find("file-input").send_keys(str(path)))

    def levels(self, canvas) -> np.ndarray:
        """A canvas's grey levels (its red channel), as (H, W) uint8."""
        width, height, red = self.driver.execute_script(
            "const c = arguments[0]; const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "return [c.width, c.height, Array.from(data.filter((_, i) => i % 4 === 0))];",
            canvas,
        )
        return np.asarray(red, dtype=np.uint8).reshape(height, width)

    def tiles(self, container: str) -> list[np.ndarray]:
        return [self.levels(c) for c in self.find(container).find_elements("css selector", "canvas")]

    def download(self, button, filename: str) -> np.ndarray:
        """Press a download button; the PNG it saves as (H, W) grey levels."""
        from PIL import Image

        path = self.downloads / filename
        button.click()
        # Chromium writes NAME.crdownload and renames it when complete.
        self.wait.until(lambda _: path.is_file(), f"{filename} never downloaded")
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))

    def value(self, element_id: str) -> str:
        return self.find(element_id).get_attribute("data-value")

    def screenshot(self, name: str, full_page: bool = False) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        if full_page:
            size = self.driver.get_window_size()
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(size["width"], height + (size["height"] - self.inner_height()))
            self.driver.execute_script("window.scrollTo(0, 0)")
            self.driver.save_screenshot(str(path))
            self.driver.set_window_size(size["width"], size["height"])
        else:
            self.driver.execute_script("window.scrollTo(0, 0)")
            self.driver.save_screenshot(str(path))
        return path

    def panel_screenshot(self, element_id: str, name: str) -> Path:
        """One element, whole: the window made tall enough for the page while it is taken."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        size = self.driver.get_window_size()
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(size["width"], height + (size["height"] - self.inner_height()))
        self.find(element_id).screenshot(str(path))
        self.driver.set_window_size(size["width"], size["height"])
        return path

    def inner_height(self) -> int:
        return self.driver.execute_script("return window.innerHeight")

    def console_errors(self) -> list[str]:
        entries = self.driver.get_log("browser")  # reading the log empties it
        return [
            e["message"]
            for e in entries
            if e["level"] == "SEVERE" and not any(allowed in e["message"] for allowed in self.allowed_errors)
        ]


@pytest.fixture
def page(driver, explorer_url, tmp_path):
    """The page, freshly loaded, downloading into tmp_path/downloads; the test fails on any console
    error it did not declare."""
    driver.get("about:blank")
    driver.get_log("browser")  # what earlier tests left
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path / "downloads")}
    )
    explorer = Explorer(driver, explorer_url, tmp_path / "downloads")
    explorer.open()
    yield explorer
    errors = explorer.console_errors()
    assert not errors, f"browser console errors: {errors}"


@pytest.fixture
def image_files(tmp_path, test_images):  # noqa: F811 (the shared fixture, by name)
    """Fashion-MNIST test images 0-3 as PNG files the page can be given."""
    from tests.integration.conftest import png

    paths = []
    for i in range(4):
        path = tmp_path / f"fashion-mnist-test-{i}.png"
        path.write_bytes(png(test_images[i]))
        paths.append(path)
    return paths
