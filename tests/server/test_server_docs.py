"""The OpenAPI docs page works offline: its assets come from the package, not a CDN."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from clipsift.server.app import create_app


def test_docs_assets_are_local():
    with TestClient(create_app(None, "fake"), base_url="http://127.0.0.1") as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets and all(a.startswith("/") for a in assets), assets
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
