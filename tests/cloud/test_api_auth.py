"""Tokens, roles, the Host check, dashboard sessions and upload caps of a real cloud."""

from __future__ import annotations

import gzip
import io
import json
import re
import socket
import tarfile
import time
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.routing import APIRoute
from support.cloud_ingest import unique_fleet

from edgefleet.cloud.app import Cloud, CloudConfig
from edgefleet.cloud.broker import MosquittoBroker
from edgefleet.cloud.launcher import CloudProcess
from edgefleet.protocol.bundle import unpack_bundle
from edgefleet.protocol.errors import BundleError

# Routes any caller may reach: liveness, the API's own docs, the login page and its script.
OPEN = {"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/login",
        "/auth/login", "/v1/provision", "/v1/provision/renew",
        "/", "/dashboard"}  # fmt: skip
WRITE = {"POST", "PUT", "DELETE", "PATCH"}
# Writes a viewer may make: ending its own dashboard session.
VIEWER_WRITES = {("POST", "/auth/logout")}


@pytest.fixture
def cloud(tmp_path: Path, mosquitto: MosquittoBroker):
    fleet = unique_fleet()
    config = CloudConfig(
        workdir=tmp_path / "cloud", broker_url=mosquitto.url, http_port=0, fleet=fleet,
        node_id=f"cloud-{fleet}", allowed_hosts=("fleet.example.com",),
    )  # fmt: skip
    with Cloud(config) as c:
        yield c


def _token(cloud: Cloud, role: str) -> str:
    r = httpx.post(
        f"{cloud.http_url}/v1/tokens",
        json={"name": f"t-{role}", "role": role},
        headers={"Authorization": f"Bearer {cloud.admin_token}"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _walk(routes: list[object], prefix: str = "") -> list[tuple[str, set[str]]]:
    """Every APIRoute, through included routers (newer FastAPI keeps them nested)."""
    out: list[tuple[str, set[str]]] = []
    for r in routes:
        if isinstance(r, APIRoute):
            out.append((prefix + r.path, set(r.methods)))
        elif hasattr(r, "original_router"):
            sub = r.original_router  # type: ignore[attr-defined]
            out += _walk(sub.routes, prefix + r.include_context.prefix)  # type: ignore[attr-defined]
    return out


def _routes(cloud: Cloud) -> list[tuple[str, str]]:
    assert cloud._server is not None
    app = cloud._server.config.app
    found = _walk(app.routes)  # type: ignore[attr-defined]
    # The OpenAPI document must not list a route the walk missed.
    documented = set(app.openapi()["paths"])  # type: ignore[attr-defined]
    assert documented <= {p for p, _ in found}, documented - {p for p, _ in found}
    out = []
    for path, methods in found:
        if path not in OPEN:
            out += [(m, re.sub(r"\{[^}]+\}", "x", path)) for m in sorted(methods - {"HEAD"})]
    return out


def test_every_route_needs_a_token(cloud: Cloud) -> None:
    """Enumerated from the app: a route added later cannot be forgotten."""
    routes = _routes(cloud)
    assert len(routes) >= 30
    bad = "Bearer ef_00000000_not-a-real-token"
    with httpx.Client(base_url=cloud.http_url, timeout=10) as http:
        for method, path in routes:
            for headers in ({}, {"Authorization": bad}):
                r = http.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, r.status_code, r.text)
                assert r.json()["reason"] in ("unauthenticated",), r.text
        assert http.get("/healthz").status_code == 200


def test_viewer_403_on_every_write_operator_and_admin(cloud: Cloud) -> None:
    viewer, operator = _token(cloud, "viewer"), _token(cloud, "operator")
    writes = [(m, p) for m, p in _routes(cloud) if m in WRITE and (m, p) not in VIEWER_WRITES]
    assert len(writes) >= 9
    with httpx.Client(base_url=cloud.http_url, timeout=10) as http:
        for method, path in writes:
            r = http.request(method, path, headers={"Authorization": f"Bearer {viewer}"})
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert r.json()["reason"] == "forbidden"
        op = {"Authorization": f"Bearer {operator}"}
        assert (
            http.get("/v1/devices", headers={"Authorization": f"Bearer {viewer}"}).status_code
            == 200
        )
        # An operator assigns and tags (here: 422/404 past the auth check), but no tokens.
        assert http.put("/v1/devices/nope/tags", json={"tags": []}, headers=op).status_code == 404
        assert http.post("/v1/tokens", json={"name": "x"}, headers=op).status_code == 403
        assert http.get("/v1/tokens", headers=op).status_code == 403
        admin = {"Authorization": f"Bearer {cloud.admin_token}"}
        listed = http.get("/v1/tokens", headers=admin).json()
        assert {t["role"] for t in listed} == {"admin", "viewer", "operator"}
        assert all("token" not in t for t in listed)
        assert all("hash" not in t for t in listed)


def test_revoked_token_401(cloud: Cloud) -> None:
    tok = _token(cloud, "operator")
    admin = {"Authorization": f"Bearer {cloud.admin_token}"}
    with httpx.Client(base_url=cloud.http_url, timeout=10) as http:
        h = {"Authorization": f"Bearer {tok}"}
        assert http.get("/v1/devices", headers=h).status_code == 200
        tid = next(
            t["id"]
            for t in http.get("/v1/tokens", headers=admin).json()
            if t["name"] == "t-operator"
        )
        assert http.delete(f"/v1/tokens/{tid}", headers=admin).status_code == 200
        r = http.get("/v1/devices", headers=h)
        assert r.status_code == 401
        assert "revoked" in r.json()["detail"]


def test_admin_token_file_is_0600(cloud: Cloud) -> None:
    path = cloud.config.workdir / "admin.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == cloud.admin_token
    assert (cloud.config.workdir / "auth.db").stat().st_mode & 0o077 == 0
    assert cloud.admin_token not in (cloud.config.workdir / "auth.db").read_bytes().decode(
        "latin-1"
    )


def test_host_check(cloud: Cloud) -> None:
    h = {"Authorization": f"Bearer {cloud.admin_token}"}
    with httpx.Client(base_url=cloud.http_url, timeout=10) as http:
        r = http.get("/v1/devices", headers={**h, "Host": "evil.example.net"})
        assert r.status_code == 400
        assert r.json()["reason"] == "bad-host"
        assert "--allowed-host" in r.json()["detail"]
        assert http.get("/healthz", headers={"Host": "rebind.attacker:8080"}).status_code == 400
        for ok in ("localhost:1234", "127.0.0.1", "fleet.example.com"):
            assert http.get("/v1/devices", headers={**h, "Host": ok}).status_code == 200


def test_dashboard_login_session_csrf_logout(cloud: Cloud) -> None:
    viewer = _token(cloud, "viewer")
    with httpx.Client(base_url=cloud.http_url, timeout=10, follow_redirects=False) as http:
        assert http.get("/").status_code in (302, 307)
        assert http.get("/dashboard/api/snapshot").status_code == 401
        assert http.post("/auth/login", json={"token": "ef_bad"}).status_code == 401
        r = http.post("/auth/login", json={"token": viewer})
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        csrf = r.json()["csrf"]
        assert http.get("/dashboard/api/snapshot").status_code == 200
        assert http.get("/").status_code == 200
        assert http.get("/auth/session").json()["csrf"] == csrf
        # A state-changing request with the cookie but no CSRF header is refused.
        r = http.post("/auth/logout")
        assert r.status_code == 403
        assert r.json()["reason"] == "csrf"
        r = http.post(
            "/auth/logout", headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        )
        assert r.status_code == 403
        assert http.post("/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
        assert http.get("/dashboard/api/snapshot").status_code == 401


def _bomb() -> bytes:
    """A gzip tar of 300,000 empty entries (about 1.9 MB)."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for i in range(300_000):
            tar.addfile(tarfile.TarInfo(f"f{i}"))
    return buf.getvalue()


def test_300k_entry_archive_refused_fast_and_small(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(_bomb())
    proc = psutil.Process()
    before, t0 = proc.memory_info().rss, time.perf_counter()
    with pytest.raises(BundleError, match="more than 64 entries"):
        unpack_bundle(archive, tmp_path / "out")
    took, grew = time.perf_counter() - t0, proc.memory_info().rss - before
    assert took < 1.0, took
    assert grew < 20 * 2**20, grew
    print(f"300k entries: {took * 1000:.0f} ms, +{grew / 2**20:.1f} MiB")


def _rss(pid: int) -> int:
    p = psutil.Process(pid)
    return int(p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True)))


def _post_streaming(url: str, token: str, total: int) -> tuple[int, bytes]:
    """POST ``total`` bytes in 1 MiB chunks, stopping when the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/models HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/gzip\r\n"
            f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"\0" * 2**20
        sent = 0
        sock.settimeout(0.0)
        try:
            while sent < total:
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break
                except BlockingIOError:
                    pass
                sock.settimeout(30)
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sock.settimeout(0.0)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(30)
        answer = b""
        while b"too-large" not in answer and (more := sock.recv(65536)):
            answer += more
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.slow(seconds=20)
def test_200mb_upload_413_rss_grows_under_20mb(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """The real cloud process: a 200 MB body is refused with 413, RSS grows < 20 MB."""
    with CloudProcess(tmp_path / "c", broker_url=mosquitto.url, fleet=unique_fleet()) as cloud:
        token = (tmp_path / "c" / "admin.token").read_text().strip()
        assert cloud.pid is not None
        before = _rss(cloud.pid)
        status, answer = _post_streaming(cloud.http_url, token, 200 * 2**20)
        grew = _rss(cloud.pid) - before
        assert status == 413, answer
        assert b"too-large" in answer
        assert grew < 20 * 2**20, grew
        print(f"413: cloud RSS grew {grew / 2**20:.1f} MiB")


def test_download_grant_scoped_to_bundle_device_and_time(cloud: Cloud, tmp_path: Path) -> None:
    """A grant admits one archive for one device until it expires; 403 otherwise."""
    assert cloud._server is not None
    grants = cloud._server.config.app.state.auth.grants  # type: ignore[attr-defined]
    sha, other = "a" * 64, "b" * 64
    url = grants.url(cloud.http_url, sha, "dev-1")
    with httpx.Client(timeout=10) as http:
        # Past the auth check, the unknown archive is a 404: the grant was accepted.
        assert http.get(url).json()["reason"] == "not-found"
        assert http.get(url.replace(sha, other)).json()["reason"] == "bad-grant"
        assert http.get(url.replace("dev-1", "dev-2")).json()["reason"] == "bad-grant"
        stale = grants.url(cloud.http_url, sha, "dev-1", now=time.time() - grants.ttl_s - 5)
        r = http.get(stale)
        assert (r.status_code, r.json()["reason"]) == (403, "grant-expired")
        r = http.get(re.sub(r"expires=\d+", "expires=99999999999", url))
        assert (r.status_code, r.json()["reason"]) == (403, "bad-grant")
        # A grant is for /v1/blobs/<its sha256> only: the named bundle route refuses it.
        query = url.split("?")[1]
        r = http.get(f"{cloud.http_url}/v1/models/kws/1.0.0/bundle?{query}")
        assert (r.status_code, r.json()["reason"]) == (403, "bad-grant")


def test_token_cli_on_the_workdir_and_over_the_api(cloud: Cloud) -> None:
    from typer.testing import CliRunner

    from edgefleet.cloud.cli import app as cloud_cli

    runner = CliRunner()
    workdir = str(cloud.config.workdir)
    made = runner.invoke(
        cloud_cli, ["token", "create", "--role", "operator", "--name", "ci", "--workdir", workdir]
    )
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("ef_")
    h = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{cloud.http_url}/v1/devices", headers=h).status_code == 200
    # Over the API: the admin token from --token (or EDGEFLEET_TOKEN); a viewer one is refused.
    api = ["--cloud", cloud.http_url, "--token", str(cloud.admin_token)]
    listed = runner.invoke(cloud_cli, ["token", "list", "--json", *api])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    ci = next(t for t in rows if t["name"] == "ci")
    assert ci["role"] == "operator"
    assert secret not in listed.stdout
    viewer = runner.invoke(
        cloud_cli, ["token", "create", "--name", "v", *api], env={"EDGEFLEET_TOKEN": ""}
    )
    assert viewer.exit_code == 0, viewer.output
    as_viewer = ["--cloud", cloud.http_url, "--token", viewer.stdout.strip().splitlines()[-1]]
    refused = runner.invoke(cloud_cli, ["token", "revoke", ci["id"], *as_viewer])
    assert getattr(refused.exception, "reason", None) == "forbidden"
    gone = runner.invoke(cloud_cli, ["token", "revoke", ci["id"], *api])
    assert gone.exit_code == 0, gone.output
    assert httpx.get(f"{cloud.http_url}/v1/devices", headers=h).status_code == 401
    # A command that talks to the cloud says what to do without a token.
    bare = runner.invoke(
        cloud_cli, ["devices", "--cloud", cloud.http_url], env={"EDGEFLEET_TOKEN": ""}
    )
    assert "--token" in str(bare.exception)
