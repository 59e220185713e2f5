"""The latent-space explorer: static files (service/static/) at /ui/, with / pointing there.

The page reaches nothing but this origin's public API, so its responses carry a strict
Content-Security-Policy: scripts, styles and fetches from 'self' only, images from 'self' and the
blob:/data: URLs the page makes of the API's PNGs, no inline code, no framing. The policy is set on
the page's files alone: /docs (Swagger UI) runs an inline script and keeps its own rules.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MOUNT = "/ui"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate every time (StaticFiles sends an ETag): a new release's page never runs old modules.
    "Cache-Control": "no-cache",
}


class PageFiles(StaticFiles):
    """StaticFiles whose every answer carries SECURITY_HEADERS."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    # Relative, so the page is found behind a proxy that serves the app under a path prefix.
    return RedirectResponse(f"{MOUNT.lstrip('/')}/", status_code=307)


@router.get(MOUNT)
async def page_without_slash() -> RedirectResponse:
    # "ui/" resolved against /ui is /ui/; never a URL built from the request's Host header.
    return RedirectResponse(f"{MOUNT.lstrip('/')}/", status_code=307)


def install(app: FastAPI) -> None:
    app.mount(MOUNT, PageFiles(directory=STATIC_DIR, html=True), name="ui")
    app.include_router(router)
