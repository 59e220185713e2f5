"""The explorer page over real HTTP (also against the container, via VAE_BASE_URL): it is served
with its policy, its assets load from the server itself, and /preprocess shows a test image as the
model sees it. The page's behaviour in a browser is tests/browser/test_explorer.py."""

import base64
import io
import re

import numpy as np
from PIL import Image

from tests.integration.conftest import png

TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}


def test_the_page_and_its_assets_load_with_the_pages_policy(http):
    page = http.get("/", follow_redirects=True)
    assert page.status_code == 200 and str(page.url).endswith("/ui/")
    assert "<title>VAE explorer</title>" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', page.text) if not a.startswith("../")]
    modules = set()
    for asset in assets:
        response = http.get(f"/ui/{asset}")
        assert response.status_code == 200, asset
        assert response.headers["content-type"].startswith(TYPES[asset.rsplit(".", 1)[-1]]), asset
        assert response.headers["x-content-type-options"] == "nosniff"
        if asset.endswith(".js"):
            modules |= set(re.findall(r"""from\s+'\./([^']+)'""", response.text))
    for module in modules:  # app.js's imports: the installed package must hold them too
        response = http.get(f"/ui/{module}")
        assert response.status_code == 200 and "export " in response.text, module


def test_preprocess_returns_a_test_image_as_the_model_sees_it(http, test_images):
    image = test_images[3]
    body = http.post("/preprocess?format=json", files=[("file", ("shirt.png", png(image), "image/png"))]).json()
    returned = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]["png_base64"]))))
    np.testing.assert_array_equal(returned, np.rint(image[0] * 255).astype(np.uint8))
    assert body["model"]["name"]
