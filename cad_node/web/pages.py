"""The ops console: server-rendered pages behind a login, and its few actions.

Pages read the same audit functions as ``cad-node audit`` and the JSON API; they show UIDs,
AE titles, states and scores, never patient names or IDs. Every action form carries the
session's CSRF token and every action is an audit event naming its user.
"""

from __future__ import annotations

import io
import logging
import shutil
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from cad_node.audit import overview
from cad_node.audit.models import utcnow
from cad_node.domain import HEATMAP_SC, JobState, StudyState
from cad_node.errors import ModelError, ReanalysisRefusedError, UnknownStudyError
from cad_node.web.auth import ConsoleAuth, ConsoleSession
from cad_node.web.context import WebContext

log = logging.getLogger(__name__)

SESSION_COOKIE = "cad_node_session"
REFRESH_SECONDS = 15
PAGE_SIZE = 50
THUMBNAIL_PIXELS = 256
LEVELS = ("info", "warning", "error")
REFUSALS = {
    "receiving": "Not re-analysed: the study is receiving images; it is analysed when it "
    "completes.",
    "busy": "Not re-analysed: a job of this study is still queued or running.",
}
"""The study page's messages for a refused re-analysis (the query names the reason only)."""
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login form."""

    def __init__(self, path: str) -> None:
        self.path = path


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("cad_node.web", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each); the console sends no files."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


Form = Annotated[dict[str, str], Depends(form_fields)]


def logged_in(request: Request) -> ConsoleSession:
    """The request's session (``app.state.console_auth`` reads it), else :class:`LoginRequired`."""
    auth: ConsoleAuth = request.app.state.console_auth
    session = auth.read_session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return session


User = Annotated[ConsoleSession, Depends(logged_in)]


def _safe_next(target: str) -> str:
    """A same-site path to return to after logging in (never another host)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def model_status(ctx: WebContext) -> dict[str, Any]:
    """The configured model's name, version and validation status, from its manifest."""
    from cad_node.model_folder import model_info

    try:
        info = model_info(ctx.settings.model_path)
    except (ModelError, OSError, ValueError) as exc:
        return {"name": None, "version": None, "warning": f"no model ({type(exc).__name__})"}
    return {"name": info.name, "version": info.version, "warning": info.warning}


def thumbnail_png(path: str) -> bytes:
    """A heatmap SC's pixels as a PNG at most THUMBNAIL_PIXELS on a side."""
    import pydicom
    from PIL import Image

    pixels = np.asarray(pydicom.dcmread(path).pixel_array)
    if pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        pixels = ((pixels - low) * scale).astype(np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def console_router(ctx: WebContext, auth: ConsoleAuth) -> APIRouter:
    """Login, the pages (overview, studies, one study, events) and the actions.

    The app must hold ``auth`` as ``app.state.console_auth`` (see :func:`logged_in`).
    """
    templates = _environment()
    router = APIRouter(include_in_schema=False)

    def render(
        name: str, session: ConsoleSession | None, status: int = 200, **values: Any
    ) -> Response:
        html = templates.get_template(name).render(
            session=session, refresh=REFRESH_SECONDS, **values
        )
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def checked(session: ConsoleSession, form: dict[str, str]) -> None:
        import hmac

        if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            log.warning("console: action refused, bad CSRF token (user %s)", session.user)
            raise HTTPException(status_code=403, detail="bad or missing CSRF token")

    @router.get("/console.css")
    def stylesheet() -> Response:
        css = templates.loader.get_source(templates, "console.css")[0]  # type: ignore[union-attr]
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    @router.get("/login")
    def login_form(next: str = "/") -> Response:
        return render("login.html", None, next=_safe_next(next), configured=auth.configured)

    @router.post("/login")
    def login(request: Request, form: Form) -> Response:
        user, target = form.get("user", ""), _safe_next(form.get("next", "/"))
        host = request.client.host if request.client else ""
        if not auth.check_login(user, form.get("password", "")):
            log.warning("console: failed login from %s", host or "?")
            ctx.atna.console_login(user, host, login=True, succeeded=False)
            ctx.repo.record_event(
                "console.login_failed", level="warning", detail="wrong user name or password"
            )
            return render(
                "login.html",
                None,
                status=401,
                next=target,
                configured=auth.configured,
                error="Wrong user name or password.",
            )
        _, cookie = auth.new_session(user)
        ctx.repo.record_event("console.login", detail=f"user {user}")
        ctx.atna.console_login(user, host, login=True, succeeded=True)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=auth.lifetime,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    def logout(request: Request, session: User, form: Form) -> Response:
        checked(session, form)
        ctx.repo.record_event("console.logout", detail=f"user {session.user}")
        host = request.client.host if request.client else ""
        ctx.atna.console_login(session.user, host, login=False, succeeded=True)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @router.get("/")
    def overview_page(session: User) -> Response:
        summary = overview.summary(ctx.repo, ctx.jobs, utcnow())
        try:
            disk_free: int | None = shutil.disk_usage(ctx.spool.root).free
        except OSError:
            disk_free = None
        return render(
            "overview.html",
            session,
            summary=summary,
            queue_depth=summary.jobs.get(JobState.QUEUED, 0),
            disk_free=disk_free,
            disk_reserve=ctx.spool.min_free_bytes,
            model=model_status(ctx),
            backlog=sorted(ctx.deliveries.backlog().items()),
        )

    @router.get("/studies")
    def studies_page(
        session: User,
        q: Annotated[str, Query(max_length=128)] = "",
        state: Annotated[str, Query(max_length=32)] = "",
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> Response:
        rows, total = overview.studies_page(
            ctx.repo, ctx.jobs, q.strip(), state, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE
        )
        return render(
            "studies.html",
            session,
            rows=rows,
            total=total,
            q=q,
            state=state,
            page=page,
            pages=max(1, -(-total // PAGE_SIZE)),
        )

    @router.get("/studies/{study_instance_uid}")
    def study_page(
        session: User,
        study_instance_uid: str,
        resent: int | None = None,
        reanalysis: int | None = None,
        refused: Annotated[str, Query(max_length=16)] = "",
    ) -> Response:
        study = overview.study_detail(ctx.repo, ctx.jobs, study_instance_uid)
        if study is None:
            return render("missing.html", session, status=404, uid=study_instance_uid)
        objects = ctx.jobs.result_objects(study_instance_uid)
        busy = any(j.state in (JobState.QUEUED, JobState.RUNNING) for j in study.jobs)
        return render(
            "study.html",
            session,
            study=study,
            objects=objects,
            heatmap=HEATMAP_SC,
            resent=resent,
            reanalysis=reanalysis,
            refused=REFUSALS.get(refused),
            can_send=ctx.deliver_now is not None,
            can_reanalyse=ctx.reanalyse is not None
            and study.state == StudyState.COMPLETE
            and not busy,
            quote=quote,
        )

    @router.get("/studies/{study_instance_uid}/objects/{sop_instance_uid}.png")
    def heatmap_thumbnail(
        session: User, study_instance_uid: str, sop_instance_uid: str
    ) -> Response:
        found = next(
            (
                o
                for objects in ctx.jobs.result_objects(study_instance_uid).values()
                for o in objects
                if o.sop_instance_uid == sop_instance_uid and o.kind == HEATMAP_SC
            ),
            None,
        )
        outbox = ctx.settings.outbox_dir.resolve()
        path = (outbox / found.path).resolve() if found is not None else None
        if path is None or not path.is_relative_to(outbox) or not path.is_file():
            raise HTTPException(status_code=404, detail="no such heatmap in the outbox")
        return Response(
            thumbnail_png(str(path)),
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @router.get("/events")
    def events_page(
        session: User,
        level: Annotated[str, Query(max_length=16)] = "",
        kind: Annotated[str, Query(max_length=64)] = "",
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> Response:
        rows = ctx.repo.recent_events(
            PAGE_SIZE + 1,
            level if level in LEVELS else None,
            kind.strip(),
            offset=(page - 1) * PAGE_SIZE,
        )
        return render(
            "events.html",
            session,
            rows=rows[:PAGE_SIZE],
            more=len(rows) > PAGE_SIZE,
            level=level,
            kind=kind,
            page=page,
            levels=LEVELS,
            kinds=ctx.repo.event_kinds(),
        )

    @router.post("/actions/resend")
    def resend(session: User, form: Form) -> Response:
        """Re-queue failed deliveries (one object, one study, or all) and send what is due."""
        checked(session, form)
        study = form.get("study") or None
        sop = form.get("sop") or None
        n = ctx.deliveries.retry_failed(
            study_instance_uid=study,
            sop_instance_uid=sop,
            destination=form.get("destination") or None,
            by=session.user,
        )
        log.info("console: %s re-queued %d failed delivery(ies)", session.user, n)
        if ctx.deliver_now is not None:
            ctx.deliver_now()
        target = f"/studies/{quote(study, safe='')}?resent={n}" if study else f"/?resent={n}"
        return RedirectResponse(target, status_code=303)

    @router.post("/actions/reanalyse")
    def reanalyse(session: User, form: Form) -> Response:
        """Analyse a complete study again (a new revision and job), logged with the user."""
        checked(session, form)
        study = form.get("study", "")
        target = f"/studies/{quote(study, safe='')}"
        if ctx.reanalyse is None:
            raise HTTPException(status_code=503, detail="this node runs no pipeline")
        try:
            job_id, revision = ctx.reanalyse(study, session.user)
        except UnknownStudyError:
            return RedirectResponse(target, status_code=303)  # the page says it is unknown
        except ReanalysisRefusedError as exc:
            log.info("console: re-analysis by %s refused (%s)", session.user, exc.reason)
            return RedirectResponse(f"{target}?refused={exc.reason}", status_code=303)
        log.info("console: %s asked for job %d (revision %d)", session.user, job_id, revision)
        return RedirectResponse(f"{target}?reanalysis={job_id}", status_code=303)

    return router
