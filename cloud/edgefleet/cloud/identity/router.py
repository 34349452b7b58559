"""HTTP routes of device identity: provisioning by claim, renewal, claim tokens, revocation.

``POST /v1/provision`` and ``/v1/provision/renew`` are authenticated by the claim token and
by the current certificate's key, never by an API token (a fresh device has none); making
claim tokens and revoking are for admins; the CA, the CRL and the list are for viewers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from edgefleet.cloud.auth import Principal, Role, require
from edgefleet.cloud.identity.service import Provisioner

_PEM_MAX = 16 * 1024
# Module level, not inside identity_router: with postponed annotations FastAPI resolves these
# names from the module's globals, and a local alias breaks the route and /openapi.json.
admin = Annotated[Principal, Depends(require(Role.admin))]
viewer = Annotated[Principal, Depends(require(Role.viewer))]


class ProvisionBody(BaseModel):
    """A fresh device's claim: the token, its CSR, and optionally the id it asks for."""

    token: str = Field(min_length=8, max_length=200)
    csr: str = Field(max_length=_PEM_MAX, description="PEM CSR over the device's EC key")
    device_id: str | None = Field(None, max_length=64)
    fleet: str | None = Field(None, max_length=64, description="refused if not the token's")


class RenewBody(BaseModel):
    """A renewal: the current certificate, a CSR for the new key, and a signature over it."""

    certificate: str = Field(max_length=_PEM_MAX)
    csr: str = Field(max_length=_PEM_MAX)
    signature: str = Field(max_length=1024, description="base64 ECDSA by the current key")


class ClaimBody(BaseModel):
    """Make a claim token for ``fleet`` (with ``tags``), good for ``uses`` devices."""

    fleet: str = Field(max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=64)
    uses: int = Field(1, ge=1, le=10_000)
    ttl_s: float = Field(900.0, gt=0, le=30 * 86400)


def identity_router(provisioner: Provisioner) -> APIRouter:
    """The identity routes over ``provisioner``."""
    r = APIRouter(tags=["identity"])
    p = provisioner

    @r.post("/v1/provision", status_code=201)
    def provision(body: ProvisionBody) -> dict[str, Any]:
        """Spend a claim token: the device's certificate, broker, keys and credentials."""
        return p.provision(body.token, body.csr, body.device_id, body.fleet)

    @r.post("/v1/provision/renew")
    def renew(body: RenewBody) -> dict[str, Any]:
        """A new certificate for a new key, signed for by the current certificate's key."""
        return p.renew(body.certificate, body.csr, body.signature)

    @r.get("/v1/identity/ca.pem", response_class=Response)
    def ca(_who: viewer) -> Response:
        """The project CA certificate (what brokers and devices trust)."""
        return Response(p.ca.ca_pem(), media_type="application/x-pem-file")

    @r.get("/v1/identity/crl.pem", response_class=Response)
    def crl(_who: viewer) -> Response:
        """The CA's current revocation list."""
        return Response(p.crl_path.read_bytes(), media_type="application/x-pem-file")

    @r.post("/v1/claim-tokens", status_code=201)
    def claim_token(body: ClaimBody, who: admin) -> dict[str, Any]:
        """A new claim token (shown once; only its hash is stored)."""
        token, claim = p.book.create_claim(
            body.fleet, body.tags, uses=body.uses, ttl_s=body.ttl_s, created_by=who.name
        )
        return {
            "token": token,
            "fleet": claim.fleet,
            "tags": list(claim.tags),
            "uses": claim.uses_max,
            "expires_at": claim.expires_at,
        }

    @r.get("/v1/identities")
    def identities(_who: viewer, fleet: str | None = None) -> list[dict[str, Any]]:
        """Every certificate issued: device, serial, validity and state."""
        return [i.summary() for i in p.book.all(fleet=fleet)]

    @r.post("/v1/identities/{device_id}/revoke")
    def revoke(device_id: str, _who: admin) -> dict[str, Any]:
        """Revoke a device: certificates (CRL), API tokens and broker access, at once."""
        return p.revoke(device_id)

    return r
