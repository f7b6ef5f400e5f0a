"""The ASGI app: open health and metrics, the token-protected JSON API, the ops console."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cad_node import __version__
from cad_node.audit import overview
from cad_node.audit.models import utcnow
from cad_node.errors import ReanalysisRefusedError, UnknownStudyError
from cad_node.web import schemas
from cad_node.web.auth import ConsoleAuth, expected_digest, require_token
from cad_node.web.context import WebContext
from cad_node.web.health import readiness
from cad_node.web.metrics import build_registry
from cad_node.web.pages import LoginRequired, console_router

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
BEARER = HTTPBearer(auto_error=False)  # module level: annotations are resolved in globals


def health_router(ctx: WebContext) -> APIRouter:
    """``/healthz``, ``/readyz`` and ``/metrics``: unauthenticated, no patient data."""
    router = APIRouter(tags=["health"])
    registry = build_registry(ctx)

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is alive and serving HTTP."""
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"description": "a check failed"}})
    def readyz() -> JSONResponse:
        """Database reachable, spool writable above the reserve, SCP listening, broker."""
        checks = readiness(ctx)
        ready = all(c.ok for c in checks.values())
        body = {"ready": ready, "checks": {name: c.as_dict() for name, c in checks.items()}}
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", response_class=Response)
    def scrape() -> Response:
        """Prometheus text format; every name starts with ``cad_node_``."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def api_router(ctx: WebContext, app: FastAPI) -> APIRouter:
    """The JSON API: what ``cad-node audit ... --json`` prints, behind the bearer token."""
    expected = expected_digest(ctx.settings.http_token.get_secret_value())

    def authorised(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        require_token(credentials, expected)

    router = APIRouter(prefix=API_PREFIX, tags=["api"], dependencies=[Depends(authorised)])

    @router.get("/studies", response_model=list[schemas.StudyRow])
    def studies(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Any:
        """Recent studies, newest first (``cad-node audit studies --json``)."""
        return [s.to_dict() for s in ctx.repo.list_studies(limit)]

    @router.get(
        "/studies/{study_instance_uid}",
        response_model=schemas.StudyDetail,
        responses={404: {"description": "unknown study"}},
    )
    def study(study_instance_uid: str) -> Any:
        """One study: instances, jobs with scores and deliveries, events (``audit show``)."""
        found = overview.study_detail(ctx.repo, ctx.jobs, study_instance_uid)
        if found is None:
            raise HTTPException(status_code=404, detail="unknown study")
        return found.to_dict()

    @router.post(
        "/studies/{study_instance_uid}/reanalyse",
        status_code=202,
        response_model=schemas.ReanalysisQueued,
        responses={
            404: {"description": "unknown study"},
            409: {"description": "the study is receiving images, or a job of it is under way"},
            503: {"description": "this node runs no pipeline"},
        },
    )
    def reanalyse(study_instance_uid: str, request: schemas.ReanalysisRequest | None = None) -> Any:
        """Analyse a complete study again: a new revision and job, whose SR references the
        previous one (``cad-node reanalyse UID``)."""
        if ctx.reanalyse is None:
            raise HTTPException(status_code=503, detail="this node runs no pipeline")
        name = request.requested_by if request is not None else None
        by = f"{name} (api)" if name else "api"
        try:
            job_id, revision = ctx.reanalyse(study_instance_uid, by)
        except UnknownStudyError:
            raise HTTPException(status_code=404, detail="unknown study") from None
        except ReanalysisRefusedError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return {"job_id": job_id, "revision": revision, "requested_by": by}

    @router.get("/summary", response_model=schemas.Summary)
    def summary() -> Any:
        """Studies, images, jobs and deliveries by state, recent errors (``audit summary``)."""
        return overview.summary(ctx.repo, ctx.jobs, utcnow()).to_dict()

    @router.get("/events", response_model=list[schemas.EventRow])
    def events(
        level: Literal["info", "warning", "error"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> Any:
        """The newest events (``cad-node audit events --json``)."""
        return [e.to_dict() for e in ctx.repo.recent_events(limit, level)]

    @router.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        """This API's OpenAPI schema."""
        return app.openapi()

    return router


def build_app(ctx: WebContext) -> FastAPI:
    """The node's web app. No interactive docs: they would load scripts from the internet."""
    app = FastAPI(
        title="cad-node",
        version=__version__,
        summary="Ops API of a CAD node for screening mammography (decision support)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # no stack trace to the client, and only the error's type in the log
        log.error("web: %s %s failed (%s)", request.method, request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.path, safe='')}", status_code=303)

    app.include_router(health_router(ctx))
    app.include_router(api_router(ctx, app))
    app.state.console_auth = ConsoleAuth(ctx.settings)
    app.include_router(console_router(ctx, app.state.console_auth))
    return app
