"""Routes of credentials: dashboard login and logout, and API tokens (admin)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from edgefleet.cloud.auth.deps import authenticator, require
from edgefleet.cloud.auth.errors import Forbidden, Unauthenticated
from edgefleet.cloud.auth.roles import Principal, Role
from edgefleet.cloud.auth.sessions import SESSION_COOKIE


class LoginRequest(BaseModel):
    """An API token pasted into the login page."""

    token: str = Field(min_length=1, max_length=200)


class TokenRequest(BaseModel):
    """A new API token: who uses it and with which role."""

    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.viewer


def _login_page() -> Path:
    return Path(str(resources.files("edgefleet.cloud.auth") / "login.html"))


def _same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden(f"cross-origin login from {origin} refused", reason="csrf")


def auth_router() -> APIRouter:
    """``/login``, ``/auth/...`` and ``/v1/tokens``."""
    router = APIRouter()
    admin = Depends(require(Role.admin))

    @router.get("/login", include_in_schema=False)
    def login_page() -> FileResponse:
        return FileResponse(_login_page(), media_type="text/html")

    @router.post("/auth/login", tags=["auth"])
    def login(request: Request, body: LoginRequest) -> JSONResponse:
        """Exchange an API token for a dashboard session cookie (HttpOnly, SameSite=Strict)."""
        _same_origin(request)
        auth = authenticator(request)
        principal = auth.tokens.authenticate(body.token.strip())
        if principal.kind == "device":
            raise Forbidden("a device credential cannot log in to the dashboard")
        sid, session = auth.sessions.open(principal)
        resp = JSONResponse(
            {"name": principal.name, "role": principal.role.value, "csrf": session.csrf}
        )
        resp.set_cookie(
            SESSION_COOKIE,
            sid,
            max_age=int(auth.sessions.ttl_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return resp

    @router.get("/auth/session", tags=["auth"])
    def session(
        request: Request, p: Annotated[Principal, Depends(require(Role.viewer))]
    ) -> dict[str, Any]:
        """Who this session is, and the CSRF token its scripts send on writes."""
        sid = request.cookies.get(SESSION_COOKIE)
        live = authenticator(request).sessions.get(sid) if sid and p.kind == "session" else None
        csrf = live.csrf if live is not None else None
        return {"name": p.name, "role": p.role.value, "kind": p.kind, "csrf": csrf}

    @router.post("/auth/logout", tags=["auth"])
    def logout(request: Request) -> JSONResponse:
        """End the dashboard session (needs the CSRF header like any write)."""
        auth = authenticator(request)
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid:
            raise Unauthenticated("no session to end")
        auth.principal(request)  # the CSRF check of a state-changing request
        auth.sessions.close(sid)
        resp = JSONResponse({"logged_out": True})
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @router.get("/v1/tokens", tags=["auth"], dependencies=[admin])
    def list_tokens(request: Request) -> list[dict[str, object]]:
        """Every token's record (never a secret)."""
        return [t.to_json() for t in authenticator(request).tokens.list()]

    @router.post("/v1/tokens", tags=["auth"], status_code=201, dependencies=[admin])
    def create_token(request: Request, body: TokenRequest) -> dict[str, object]:
        """A new API token; its secret is in this answer only."""
        secret, info = authenticator(request).tokens.create(body.name, body.role)
        return {**info.to_json(), "token": secret}

    @router.delete("/v1/tokens/{token_id}", tags=["auth"], dependencies=[admin])
    def revoke_token(request: Request, token_id: str) -> dict[str, object]:
        """Revoke a token; its sessions end too."""
        auth = authenticator(request)
        info = auth.tokens.revoke(token_id)
        auth.sessions.close_token(token_id)
        return info.to_json()

    return router
