"""The HTTP API (FastAPI): fleet, devices, telemetry, quarantine, models, assignments, metrics."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from edgefleet.cloud.assignments import Assigner
from edgefleet.cloud.auth import Authenticator, Forbidden, Role, Unauthenticated, require
from edgefleet.cloud.auth import require_device as _require_device
from edgefleet.cloud.auth.host import LOOPBACK_HOSTS, TrustedHosts
from edgefleet.cloud.auth.routes import auth_router
from edgefleet.cloud.errors import Conflict, NoTargets, NotFound
from edgefleet.cloud.fl.runs.run import FlRunRequest
from edgefleet.cloud.fl.runs.service import FlService
from edgefleet.cloud.identity.errors import (
    BadRequestKey,
    ClaimRefused,
    IdentityError,
    RenewRefused,
    UnknownIdentity,
)
from edgefleet.cloud.identity.service import Provisioner
from edgefleet.cloud.metrics import CloudMetrics
from edgefleet.cloud.registry import ModelRegistry
from edgefleet.cloud.store.base import (
    Assignment,
    DeviceState,
    ModelVersion,
    RecordTable,
    TelemetryStore,
)
from edgefleet.protocol.errors import BundleError, ConfigError, EdgefleetError, Incompatible

API_VERSION = "v1"


class TooLarge(EdgefleetError):
    """A request body over the cloud's upload cap (HTTP 413)."""

    reason = "too-large"


# First match wins: Incompatible is a BundleError, but the bundle is fine, the target is not.
_STATUS: dict[type[EdgefleetError], int] = {
    Unauthenticated: 401,
    Forbidden: 403,
    TooLarge: 413,
    ClaimRefused: 403,
    RenewRefused: 403,
    BadRequestKey: 422,
    UnknownIdentity: 404,
    IdentityError: 422,
    NotFound: 404,
    Conflict: 409,
    Incompatible: 409,
    NoTargets: 422,
    BundleError: 422,
    ConfigError: 422,
}
_HTTP_REASONS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "too-large",
    415: "unsupported-media-type",
}


@dataclass(frozen=True, slots=True)
class CloudServices:
    """What the API serves from; built by :class:`~edgefleet.cloud.app.Cloud`."""

    store: TelemetryStore
    registry: ModelRegistry
    assigner: Assigner | None
    metrics: CloudMetrics
    fleet: str | None = None
    fl: FlService | None = None
    auth: Authenticator | None = None
    # Host names the API answers to (DNS rebinding); ports are not compared.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_upload_bytes: int = 64 * 1024 * 1024
    # Device identities (claim tokens, provisioning, revocation); None: no such routes.
    identity: Provisioner | None = None


class FleetSummary(BaseModel):
    """Counts over the fleet."""

    devices: int
    online: int
    offline: int
    models: dict[str, int] = Field(description="devices per running name@version")


class QuarantineItem(BaseModel):
    """One refused message."""

    id: int | None
    received_at: float
    reason: str
    topic: str
    device_id: str | None
    detail: str
    payload_size: int
    payload_excerpt_b64: str


class AssignRequest(BaseModel):
    """Assign ``model`` (``name@version``) to devices, a tag, or the whole fleet."""

    model: str = Field(examples=["kws@1.2.0"])
    devices: list[str] | None = None
    tag: str | None = None
    all: bool = False
    fleet: str | None = None
    rollout_id: str | None = None
    wave: int = 0
    allow_task_change: bool = Field(
        False,
        description="repurpose the devices: another task or label set than they serve now",
    )
    rollback: bool = Field(
        False,
        description="an older version on purpose: without it agents refuse a downgrade",
    )


class ForgetResult(BaseModel):
    """What forgetting a device deleted: rows per table."""

    device_id: str
    deleted: dict[str, int]


class FlRunBody(BaseModel):
    """Start a federated run; devices: named ones, or every online device serving the model."""

    model_config = ConfigDict(populate_by_name=True)

    model: str = Field(examples=["vibration-anomaly"])
    rounds: int = Field(3, ge=1, le=1000)
    min_clients: int = Field(2, ge=1)
    devices: list[str] = []
    strategy: str = "fedavg"
    epochs: int = Field(1, ge=1)
    lr: float = Field(0.05, gt=0)
    max_samples: int = Field(1000, ge=1)
    round_timeout_s: float = Field(120.0, gt=0)
    quorum_timeout_s: float = Field(60.0, ge=0)
    deadline_s: float | None = Field(
        None, gt=0, description="device session; default: run's worst case"
    )
    register_result: bool = Field(
        True, alias="register", description="sign and register the result (needs a key)"
    )
    assign: bool = Field(
        False, description="send the registered bundle to the devices that trained"
    )
    margin: float | None = None
    seed: int = 0
    from_version: str | None = Field(
        None,
        examples=["1.0.0"],
        description="registered version to fine-tune; default: the newest not rejected",
    )
    dp: str = Field(
        "none", description="differential privacy: none|server-fixed|server-adaptive|local"
    )
    dp_noise: float = Field(0.1, ge=0, description="DP noise multiplier")
    dp_clip: float = Field(5.0, gt=0, description="DP clipping norm (initial, if adaptive)")


class TagsRequest(BaseModel):
    """New tags of a device."""

    tags: list[str]


def _error(exc: EdgefleetError) -> JSONResponse:
    status = next((code for t, code in _STATUS.items() if isinstance(exc, t)), 500)
    return JSONResponse({"reason": exc.reason, "detail": str(exc)}, status_code=status)


def _invalid(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in the one error shape, one clause per bad field."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return JSONResponse(
        {"reason": "invalid-request", "detail": "; ".join(parts) or "the request is invalid"},
        status_code=422,
    )


def _http(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method...) in the one error shape."""
    code = exc.status_code
    reason = _HTTP_REASONS.get(code, "http")
    if code == 404 and exc.detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}: /docs lists the API"
    elif code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed on {request.url.path}" + (
            f"; allowed: {allowed}" if allowed else ""
        )
    else:
        detail = str(exc.detail)
    return JSONResponse({"reason": reason, "detail": detail}, status_code=code, headers=exc.headers)


def create_app(services: CloudServices) -> FastAPI:  # noqa: PLR0915 - one statement per route
    """The FastAPI application over ``services`` (OpenAPI at ``/openapi.json``, UI at ``/docs``)."""
    app = FastAPI(
        title="edgefleet cloud",
        version="1",
        description="Fleet state, telemetry, quarantine, model registry and assignments.",
    )
    s = services
    # Every route below needs a credential; open: /healthz, /docs, /openapi.json, /login and
    # the dashboard's static files (docs/http-api.md). A test enumerates the routes.
    app.state.auth = s.auth
    app.add_middleware(TrustedHosts, allowed=s.allowed_hosts)
    app.include_router(auth_router())
    viewer = [Depends(require(Role.viewer))]
    operator = [Depends(require(Role.operator))]
    downloader = [Depends(_require_device())]

    @app.exception_handler(EdgefleetError)
    async def _on_error(_r: Request, exc: EdgefleetError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(exc)

    @app.exception_handler(HTTPException)
    async def _on_http(request: Request, exc: HTTPException) -> JSONResponse:
        return _http(request, exc)

    @app.exception_handler(Exception)
    async def _on_bug(_r: Request, exc: Exception) -> JSONResponse:
        # The message may hold internals (paths, SQL): the log has it, the client gets the type.
        return JSONResponse(
            {
                "reason": "internal",
                "detail": f"internal error ({type(exc).__name__}); the cloud's log has the trace",
            },
            status_code=500,
        )

    if s.identity is not None:
        from edgefleet.cloud.identity.router import identity_router

        app.include_router(identity_router(s.identity))

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        """Liveness: the store answers."""
        return {"ok": True, "schema": s.store.schema_version()}

    @app.get("/metrics", tags=["ops"], response_class=Response, dependencies=viewer)
    def metrics() -> Response:
        """Prometheus metrics in the text format."""
        return Response(s.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/fleet", tags=["fleet"], dependencies=viewer)
    def fleet(fleet: str | None = None) -> FleetSummary:
        """How many devices, how many online, which model versions run."""
        devices = s.store.devices(fleet=fleet or s.fleet)
        online = sum(d.online for d in devices)
        models: dict[str, int] = {}
        for d in devices:
            key = f"{d.model}@{d.model_version}" if d.model else "none"
            models[key] = models.get(key, 0) + 1
        return FleetSummary(
            devices=len(devices), online=online, offline=len(devices) - online, models=models
        )

    @app.get("/v1/devices", tags=["fleet"], dependencies=viewer)
    def devices(
        fleet: str | None = None, tag: str | None = None, online: bool | None = None
    ) -> list[DeviceState]:
        """Devices with their state, health and outbox figures."""
        return s.store.devices(fleet=fleet or s.fleet, tag=tag, online=online)

    @app.get("/v1/devices/{device_id}", tags=["fleet"], dependencies=viewer)
    def device(device_id: str) -> DeviceState:
        """One device."""
        return s.store.device(device_id)

    @app.delete("/v1/devices/{device_id}", tags=["fleet"], dependencies=operator)
    def forget_device(
        device_id: str,
        purge: Annotated[
            bool, Query(description="also delete its telemetry, events, acks and quarantine rows")
        ] = False,
    ) -> ForgetResult:
        """Forget an offline device (its row, state, tags); its telemetry stays unless purge."""
        d = s.store.device(device_id)
        if d.online:
            raise Conflict(
                f"{device_id} is online: it would come back at its next message; stop its "
                "agent first (its will marks it offline), then forget it",
                reason="device-online",
            )
        return ForgetResult(
            device_id=device_id, deleted=s.store.forget_device(device_id, purge=purge)
        )

    @app.put("/v1/devices/{device_id}/tags", tags=["fleet"], dependencies=operator)
    def set_tags(device_id: str, body: TagsRequest) -> DeviceState:
        """Replace a device's tags (assignments can target a tag)."""
        return s.store.set_tags(device_id, body.tags)

    @app.get("/v1/telemetry/{table}", tags=["telemetry"], dependencies=viewer)
    def telemetry(
        table: RecordTable,
        device: str | None = None,
        since: Annotated[float | None, Query(description="t >= since (Unix seconds)")] = None,
        until: Annotated[float | None, Query(description="t < until (Unix seconds)")] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> list[dict[str, Any]]:
        """Records of one table in a time range, newest first."""
        return s.store.records(table, device_id=device, since=since, until=until, limit=limit)

    @app.get("/v1/quarantine", tags=["telemetry"], dependencies=viewer)
    def quarantine(
        device: str | None = None,
        reason: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[QuarantineItem]:
        """Messages ingest refused, with the reason code and the start of the payload."""
        rows = s.store.quarantined(
            device_id=device, reason=reason, since=since, until=until, limit=limit
        )
        return [
            QuarantineItem(
                id=q.id,
                received_at=q.received_at,
                reason=q.reason,
                topic=q.topic,
                device_id=q.device_id,
                detail=q.detail,
                payload_size=q.payload_size,
                payload_excerpt_b64=base64.b64encode(q.payload_excerpt).decode(),
            )
            for q in rows
        ]

    @app.post(
        "/v1/models",
        tags=["models"],
        status_code=201,
        dependencies=operator,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def push_model(request: Request) -> ModelVersion:
        """Upload a signed bundle archive (body: the .tar.gz); 422 unless signed by a trusted key.

        The body streams to a file under the registry, never held in memory; over the upload
        cap it is refused with 413 as soon as the cap is passed (or at once, by Content-Length).
        """
        cap = s.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise TooLarge(f"the archive is {int(declared)} bytes; this cloud takes up to {cap}")
        with s.registry.upload() as up:
            async for chunk in request.stream():
                if up.size + len(chunk) > cap:
                    raise TooLarge(f"the archive is over {cap} bytes, this cloud's upload cap")
                up.write(chunk)
            path = up.finish()
            return await run_in_threadpool(s.registry.push_file, path)

    @app.get("/v1/models", tags=["models"], dependencies=viewer)
    def list_models(name: str | None = None) -> list[ModelVersion]:
        """Registered versions with metrics and lineage."""
        return s.store.models(name)

    @app.get("/v1/models/{name}/{version}", tags=["models"], dependencies=viewer)
    def get_model(name: str, version: str) -> ModelVersion:
        """One version with its manifest."""
        return s.store.model(name, version)

    @app.delete("/v1/models/{name}/{version}", tags=["models"], dependencies=operator)
    def delete_model(name: str, version: str) -> ModelVersion:
        """Unregister a version and its archive; 409 while a device serves it or it is in flight."""
        return s.registry.delete(name, version)

    @app.get(
        "/v1/models/{name}/{version}/bundle",
        tags=["models"],
        response_class=FileResponse,
        dependencies=downloader,
    )
    def download_model(name: str, version: str) -> FileResponse:
        """The bundle archive (Range requests supported, so agents resume)."""
        model, path = s.registry.archive(name, version)
        return FileResponse(
            path, media_type="application/gzip", filename=f"{model.name}-{model.version}.tar.gz"
        )

    @app.get(
        "/v1/blobs/{sha256}", tags=["models"], response_class=FileResponse, dependencies=downloader
    )
    def blob(sha256: str) -> FileResponse:
        """A bundle archive by its sha256 (the URL sent in ``assign-model``)."""
        path = s.registry.blob_path(sha256)
        if not path.is_file():
            raise NotFound(f"no bundle archive with sha256 {sha256}")
        return FileResponse(path, media_type="application/gzip")

    @app.post("/v1/assignments", tags=["assignments"], status_code=201, dependencies=operator)
    def assign(body: AssignRequest) -> Assignment:
        """Send ``name@version`` to devices, a tag, or the fleet; track each device's ack."""
        if s.assigner is None:
            raise NoTargets("this cloud runs without a broker connection", reason="no-broker")
        kind: Literal["device", "list", "tag", "all"]
        chosen = sum([bool(body.devices), body.tag is not None, body.all])
        if chosen != 1:
            raise NoTargets("give exactly one of devices, tag or all", reason="bad-selector")
        if body.devices:
            kind, values = ("device" if len(body.devices) == 1 else "list"), body.devices
        elif body.tag is not None:
            kind, values = "tag", [body.tag]
        else:
            kind, values = "all", []
        return s.assigner.assign(
            body.model,
            kind,
            values,
            fleet=body.fleet or s.fleet,
            rollout_id=body.rollout_id,
            wave=body.wave,
            allow_task_change=body.allow_task_change,
            rollback=body.rollback,
        )

    @app.get("/v1/assignments", tags=["assignments"], dependencies=viewer)
    def assignments(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Assignment]:
        """Assignments, newest first, with per-device state."""
        return s.store.assignments(limit=limit)

    @app.get("/v1/assignments/{assignment_id}", tags=["assignments"], dependencies=viewer)
    def assignment(assignment_id: str) -> Assignment:
        """One assignment with the state of each target."""
        return s.store.assignment(assignment_id)

    def _fl() -> FlService:
        if s.fl is None:
            raise NoTargets("federated runs are not enabled in this cloud", reason="fl-disabled")
        return s.fl

    @app.post("/v1/fl/runs", tags=["federated"], status_code=202, dependencies=operator)
    def start_fl_run(body: FlRunBody) -> dict[str, Any]:
        """Start a federated run in the background; devices get ``start-training``."""
        fl = _fl()
        data = body.model_dump()
        data["devices"] = tuple(data["devices"])
        data["register"] = data.pop("register_result")
        run = fl.start(FlRunRequest(**data))
        return run.to_json()

    @app.get("/v1/fl/runs", tags=["federated"], dependencies=viewer)
    def fl_runs() -> list[dict[str, Any]]:
        """Federated runs of this cloud process, newest first."""
        return [r.to_json() for r in _fl().runs()]

    @app.get("/v1/fl/runs/{run_id}", tags=["federated"], dependencies=viewer)
    def fl_run(run_id: str) -> dict[str, Any]:
        """One run: state, rounds with metrics, each device's ack, the registered bundle."""
        fl = _fl()
        run = fl.get(run_id)
        return run.to_json(fl.acks(run))

    return app
