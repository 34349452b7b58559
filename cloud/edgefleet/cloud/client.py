"""A small HTTP client of the cloud API (standard library only), used by the CLI commands."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from edgefleet.cloud.auth.errors import Forbidden, Unauthenticated
from edgefleet.cloud.errors import CloudUnreachable, Conflict, NotFound
from edgefleet.protocol.errors import BundleError, EdgefleetError, Incompatible


class CloudClient:
    """Calls ``/v1/...`` of a running cloud; API errors come back as EdgefleetError."""

    def __init__(self, base_url: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # The API token (docs/http-api.md); without one, $EDGEFLEET_TOKEN.
        self.token = token or os.environ.get("EDGEFLEET_TOKEN") or None

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json_body: object | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; the decoded JSON answer."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
        headers = {"Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(  # noqa: S310 - the URL is the operator's --cloud
            self.base_url + path, data=body, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise CloudUnreachable(f"cannot reach the cloud at {self.base_url}: {exc}") from None

    def devices(self) -> list[dict[str, Any]]:
        """``GET /v1/devices``."""
        result: list[dict[str, Any]] = self.request("GET", "/v1/devices")
        return result

    def push(self, archive: bytes) -> dict[str, Any]:
        """``POST /v1/models`` with a bundle archive."""
        result: dict[str, Any] = self.request(
            "POST", "/v1/models", body=archive, content_type="application/gzip"
        )
        return result

    def assign(self, ref: str, **selector: object) -> dict[str, Any]:
        """``POST /v1/assignments``."""
        result: dict[str, Any] = self.request(
            "POST", "/v1/assignments", json_body={"model": ref, **selector}
        )
        return result

    def assignment(self, assignment_id: str) -> dict[str, Any]:
        """``GET /v1/assignments/{id}``."""
        result: dict[str, Any] = self.request("GET", f"/v1/assignments/{_seg(assignment_id)}")
        return result

    def forget(self, device_id: str, *, purge: bool = False) -> dict[str, Any]:
        """``DELETE /v1/devices/{id}`` (``?purge=true`` also deletes its telemetry)."""
        query = "?purge=true" if purge else ""
        result: dict[str, Any] = self.request("DELETE", f"/v1/devices/{_seg(device_id)}{query}")
        return result

    def delete_model(self, name: str, version: str) -> dict[str, Any]:
        """``DELETE /v1/models/{name}/{version}``."""
        result: dict[str, Any] = self.request("DELETE", f"/v1/models/{_seg(name)}/{_seg(version)}")
        return result


def _seg(value: str) -> str:
    """One path segment, escaped: an id never changes which route a request takes."""
    return urllib.parse.quote(value, safe="")


def _api_error(exc: urllib.error.HTTPError) -> EdgefleetError:  # noqa: PLR0911 - one per status
    try:
        payload = json.loads(exc.read())
        reason, detail = str(payload.get("reason", "http")), json.dumps(payload.get("detail", ""))
        detail = detail.strip('"')
    except (ValueError, AttributeError):
        reason, detail = "http", exc.reason
    message = f"the cloud answered {exc.code}: {detail}"
    if reason == "incompatible":
        return Incompatible(message)
    if exc.code == 422 and reason in _BUNDLE_REASONS:
        return BundleError(message, reason=reason)
    if exc.code == 401:
        return Unauthenticated(
            message + " (give --token or set EDGEFLEET_TOKEN; `edgefleet cloud token create`)"
        )
    if exc.code == 403:
        return Forbidden(message, reason=reason)
    if exc.code == 404:
        return NotFound(message, reason=reason)
    if exc.code == 409:
        return Conflict(message, reason=reason)
    return CloudUnreachable(message, reason=reason)


_BUNDLE_REASONS = frozenset(
    {
        "bundle",
        "unsigned",
        "bad-signature",
        "untrusted-key",
        "hash-mismatch",
        "missing-file",
        "unexpected-file",
        "bad-manifest",
        "bad-archive",
    }
)
