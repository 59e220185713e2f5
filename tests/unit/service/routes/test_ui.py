"""The explorer page (service/routes/ui.py): served from service/static/ under a strict CSP,
every asset local, no inline code; the API and /docs untouched by the page's policy."""

import re
from html.parser import HTMLParser

import pytest

from service.routes.ui import CONTENT_SECURITY_POLICY, STATIC_DIR

pytestmark = pytest.mark.anyio
TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "html": "text/html"}


class PageParser(HTMLParser):
    """Collects what the CSP cares about: referenced URLs, inline scripts, style attributes, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name):
                self.urls.append(attributes[name])
        self.inline += [f"<{tag} {name}>" for name in attributes if name == "style" or name.startswith("on")]
        self._in_script = tag == "script"
        if tag == "script" and "src" not in attributes:
            self.inline.append("<script> without src")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append("script text")


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


async def test_root_redirects_to_the_page(client):
    response = await client.get("/")
    assert response.status_code == 307 and response.headers["location"] == "ui/"
    page = await client.get("/", follow_redirects=True)
    assert page.status_code == 200 and "<title>VAE explorer</title>" in page.text


async def test_the_page_carries_a_strict_policy(client):
    response = await client.get("/ui/")
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["connect-src"] == "'self'"
    assert "unsafe" not in policy and "*" not in policy and "http" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


async def test_the_page_has_no_inline_code_and_every_asset_is_local_and_served(client):
    page = parse((await client.get("/ui/")).text)
    assert page.inline == []
    local = [url for url in page.urls if not url.startswith("../")]
    assert {url.rsplit(".", 1)[-1] for url in local} == {"js", "css", "svg"}
    assert [url for url in page.urls if url.startswith("../")] == ["../docs"]  # the API's docs, same origin
    for url in local:
        assert not re.match(r"^[a-z]+:|^//", url), f"{url} is not on this origin"
        served = await client.get(f"/ui/{url}")
        assert served.status_code == 200 and served.content == (STATIC_DIR / url).read_bytes()
        assert served.headers["content-type"].startswith(TYPES[url.rsplit(".", 1)[-1]])
        assert served.headers["x-content-type-options"] == "nosniff"


def test_every_module_import_names_a_file_beside_it():
    for script in STATIC_DIR.glob("*.js"):
        for name in re.findall(r"""from\s+['"]([^'"]+)['"]""", script.read_text()):
            assert name.startswith("./") and (STATIC_DIR / name).is_file(), f"{script.name} imports {name}"
        assert "innerHTML" not in script.read_text(), f"{script.name}: build elements, do not parse HTML"


def test_the_static_files_are_all_package_data():
    """pyproject's package-data glob `static/*` does not descend into folders: keep the page flat."""
    assert [p.name for p in STATIC_DIR.iterdir() if p.is_dir()] == []
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in STATIC_DIR.iterdir()}


async def test_a_missing_asset_is_a_json_404(client):
    response = await client.get("/ui/nothing.js")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_the_api_and_the_docs_keep_their_own_headers(client):
    """/docs runs Swagger UI's inline script: the page's policy would break it."""
    for path in ("/docs", "/v1/model", "/healthz", "/openapi.json"):
        response = await client.get(path)
        assert response.status_code == 200 and "content-security-policy" not in response.headers, path
    assert (await client.get("/v1/model")).json()["latent_dim"] > 0
