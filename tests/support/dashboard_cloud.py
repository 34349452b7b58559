"""A running cloud serving the dashboard, and a headless Chromium to look at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.dashboard import Dashboard, DashboardSettings
from support.cloud_auth import admin_token
from support.trust import command_private_key

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


class DashboardCloud:
    """The in-process cloud plus an HTTP server with the dashboard mounted."""

    def __init__(self, cloud: Cloud, dashboard: Dashboard, url: str) -> None:
        self.cloud, self.dashboard, self.url = cloud, dashboard, url
        # The cloud's first admin token, for API calls (headers) and the browser login.
        self.token = admin_token(cloud)
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def login(self, page: object, token: str | None = None) -> None:
        """Log ``page`` in through the dashboard's real login form (a session cookie)."""
        page.goto(self.url + "/login")  # type: ignore[attr-defined]
        page.fill("#token", token or self.token)  # type: ignore[attr-defined]
        page.click("#login button[type=submit]")  # type: ignore[attr-defined]
        page.wait_for_url(self.url + "/")  # type: ignore[attr-defined]


@contextmanager
def dashboard_cloud(
    workdir: Path, broker_url: str, fleet: str, *, interval_s: float = 0.5, **config: object
) -> Iterator[DashboardCloud]:
    """Start a Cloud on ``broker_url``; it serves the dashboard at ``/`` of its HTTP API."""
    config.setdefault("command_key", command_private_key())
    cloud = Cloud(CloudConfig(workdir=workdir, broker_url=broker_url, fleet=fleet, http_port=0,
                              batch_max_delay_s=0.02,
                              dashboard=DashboardSettings(interval_s=interval_s),
                              **config))  # type: ignore[arg-type]  # fmt: skip
    with cloud:
        assert cloud.dashboard is not None
        yield DashboardCloud(cloud, cloud.dashboard, cloud.http_url)


@contextmanager
def chromium(viewport: dict[str, int] | None = None) -> Iterator[object]:
    """A headless Debian Chromium page driven by Playwright (no browser download)."""
    try:
        from playwright import sync_api
    except ImportError:
        # A skip here would let CI pass with no browser test run at all.
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (it is in the dev extra)")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium (make test does it)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
            yield context.new_page()
        finally:
            browser.close()


def screenshot(page: object, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/dashboard/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path
