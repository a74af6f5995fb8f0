"""``GET /``: a page to ask a collection questions in a browser, the answer streaming in beside its cited
passages. Its HTML, script and styles ship in the package (``serving/web/``): nothing is loaded from a CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).with_name("web")
ASSETS = "/web-assets"


def install(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=WEB), name="web-assets")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")
