"""The SuperLink's Control API as the cloud uses it: the client, which failures are worth a
retry and how often, a run's status, and registering a SuperNode's key.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgefleet.cloud.fl.errors import FlRunError
from edgefleet.cloud.fl.superlink.certs import check_node_name, node_public_key_bytes


@dataclass(frozen=True, slots=True)
class ControlRetry:
    """How a Control API call that failed transiently is retried: ``attempts`` in all, backoff.

    The delay doubles from ``first_delay_s`` up to ``max_delay_s``; the defaults ride out
    about 15 s of trouble (plus each attempt's own wait) before the run fails.
    """

    attempts: int = 6
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay_s < 0 or self.max_delay_s < self.first_delay_s:
            raise ValueError("ControlRetry needs attempts >= 1 and 0 <= first_delay <= max_delay")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1)))


def transient(exc: Exception, *, idempotent: bool) -> bool:
    """Whether a Control API call that raised ``exc`` may succeed if sent again.

    A connection that never opened is always worth another try. A 5xx, a broken connection or
    a timeout may have reached the SuperLink: only calls that are safe to repeat
    (``idempotent``) are sent again after one. 4xx answers are final.
    """
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return True
    if not idempotent:
        return False
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def describe(exc: Exception) -> str:
    """A short description of a Control API failure (``HTTP 500 Internal Server Error``)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class RunStatus:
    """Status of a Flower run as the Control API reports it."""

    status: str
    sub_status: str
    details: str

    @property
    def finished(self) -> bool:
        """Whether the run ended (completed, failed or stopped)."""
        return self.status == "finished"

    @property
    def ok(self) -> bool:
        """Whether the run finished and completed."""
        return self.finished and self.sub_status == "completed"


def control_client(address: str, home: Path, ca: Path | None) -> Any:
    """A Control API client for ``address``: TLS trusting ``ca``, or plaintext without one."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection

    # Flower keeps CLI state (tokens) under FLWR_HOME; keep ours out of the user's ~/.flwr.
    os.environ["FLWR_HOME"] = str(home)
    if ca is None:
        conn = SuperLinkConnection(name="edgefleet", address=address, insecure=True)
    else:
        conn = SuperLinkConnection(name="edgefleet", address=address, root_certificates=str(ca))
    # Flower prints the connection it uses to stdout on every call; keep our output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        return init_http_client_from_connection(conn)


def register_node(
    address: str, public_key: Path, *, home: Path, ca: Path | None, name: str | None = None
) -> int:
    """Register a SuperNode's OpenSSH public key with the SuperLink at ``address``; its id."""
    from flwr.proto.control_pb2 import RegisterNodeRequest

    key = node_public_key_bytes(public_key)
    if name is not None:
        check_node_name(name)
    client = control_client(address, home, ca)
    try:
        res = client.RegisterNode(RegisterNodeRequest(public_key=key, name=name))
    except Exception as exc:
        # A key already registered is a 412 (the SuperLink's log says why); a CA that did not
        # sign the SuperLink's certificate fails the handshake.
        raise FlRunError(f"could not register {public_key} at {address}: {exc}") from None
    finally:
        client.close()
    if not res.node_id:
        raise FlRunError(f"the SuperLink at {address} did not register {public_key}")
    return int(res.node_id)
