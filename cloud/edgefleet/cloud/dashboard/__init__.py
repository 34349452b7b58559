"""The web dashboard served by the cloud at ``/``: overview, device pages, live stream."""

from edgefleet.cloud.dashboard.router import Dashboard, mount_dashboard
from edgefleet.cloud.dashboard.settings import AlertRules, DashboardSettings

__all__ = ["AlertRules", "Dashboard", "DashboardSettings", "mount_dashboard"]
