"""The trusted ``Host`` check: a DNS-rebinding page cannot talk to the API under its own name."""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def host_name(header: str) -> str:
    """The name of a ``Host`` header without its port (``[::1]:8080`` -> ``[::1]``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class TrustedHosts:
    """ASGI middleware: 400 ``bad-host`` unless ``Host`` names one of ``allowed``.

    Names are compared without the port; ``*.example.com`` allows its subdomains and ``*``
    turns the check off (documented as unsafe).
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = tuple(h.lower() for h in allowed)

    def allows(self, header: str) -> bool:
        """True when a request with this ``Host`` header is served."""
        name = host_name(header)
        for pattern in self.allowed:
            if pattern in ("*", name):
                return True
            if pattern.startswith("*.") and name.endswith(pattern[1:]):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = ""
        for key, value in scope.get("headers", ()):
            if key == b"host":
                host = value.decode("latin-1")
                break
        if self.allows(host):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "reason": "bad-host",
                "detail": f"Host {host!r} is not one this cloud serves; start it with "
                "`--allowed-host NAME` to add a name (this check stops DNS-rebinding pages)",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
