"""API credentials for tests: the admin token a cloud made at first start, as headers or clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from edgefleet.cloud.app import Cloud
from edgefleet.cloud.client import CloudClient


def admin_token(cloud: Cloud | Path) -> str:
    """The first admin token of a cloud (in-process, or its workdir's ``admin.token``)."""
    if isinstance(cloud, Cloud):
        if cloud.admin_token:
            return cloud.admin_token
        cloud = cloud.config.workdir
    return (Path(cloud) / "admin.token").read_text().strip()


def auth_headers(cloud: Cloud | Path) -> dict[str, str]:
    """``Authorization: Bearer <admin token>``."""
    return {"Authorization": f"Bearer {admin_token(cloud)}"}


def token_env(cloud: Cloud | Path) -> dict[str, str]:
    """The environment a CLI call reads its token from (``EDGEFLEET_TOKEN``)."""
    return {"EDGEFLEET_TOKEN": admin_token(cloud)}


def api(cloud: Cloud, url: str | None = None, **kwargs: Any) -> httpx.Client:
    """An httpx client on the cloud's API with its admin token."""
    headers = {**auth_headers(cloud), **kwargs.pop("headers", {})}
    return httpx.Client(base_url=url or cloud.http_url, headers=headers, **kwargs)


def client(cloud: Cloud, url: str | None = None) -> CloudClient:
    """A CloudClient with the cloud's admin token."""
    return CloudClient(url or cloud.http_url, token=admin_token(cloud))
