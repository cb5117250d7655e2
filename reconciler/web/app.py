"""The dashboard's routes: pages (GET, read-only), login, and actions (POST, confirmed).

Pages read through :class:`reconciler.web.data.Source`; actions go through
:mod:`reconciler.web.actions`; who may act is :mod:`reconciler.web.auth`.
Every response carries a strict Content-Security-Policy (no inline script or
style: there is none), no framing, no sniffing; templates autoescape.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.durations import format_duration, parse_duration
from reconciler.leases import TaskBusy
from reconciler.ops.confirm import OpsError
from reconciler.ops.export import record_export, write_export
from reconciler.ops.filter import JobFilter
from reconciler.ops.listing import SEARCH_EXAMINES
from reconciler.ops.output import jsonable
from reconciler.ops.pause import queue_label
from reconciler.ops.vocabulary import PRIORITIES, STATUSES
from reconciler.profiles import ProfileError
from reconciler.web import charts
from reconciler.web import profiles as by_profile
from reconciler.web.actions import ACTIONS, ActionsUnavailable, run_action
from reconciler.web.auth import COOKIE, Auth
from reconciler.web.data import Source

__all__ = ["build_app"]

_HERE = Path(__file__).parent
PAGE = 50  # jobs and runs per page
REFRESH_S = 10  # the overview reloads itself this often
INSUFFICIENT_PRIVILEGE = "42501"
# What an action's form names (carried from its preview to its confirmation).
_ACTION_FIELDS = ("job", "kind", "tenant", "queue", "reason", "profile")

HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class _SecurityHeaders:
    """Adds :data:`HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (k.encode(), v.encode()) for k, v in HEADERS.items() if k.encode() not in names
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def _href(path: str, **params: object) -> str:
    """A link with its query (empty values left out), on a page that has no profile."""
    kept = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    return f"{path}?{urlencode(kept)}" if kept else path


class BadInput(ValueError):
    """A filter in the address that cannot be read: one line saying which and how."""


def _names(params: Mapping[str, str], key: str) -> tuple[str, ...]:
    raw = params.get(key, "")
    return tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))


def _filter(params: Mapping[str, str]) -> tuple[JobFilter, tuple[int, ...], str | None]:
    """The jobs page's filter from its query string; BadInput for a value it cannot take."""
    statuses = _names(params, "status")
    wrong = [s for s in statuses if s not in STATUSES]
    if wrong:
        raise BadInput(f"status {wrong[0]!r} is not one of {', '.join(STATUSES)}")
    priorities: list[int] = []
    for p in _names(params, "priority"):
        if p in PRIORITIES:
            priorities.append(PRIORITIES.index(p))
        elif p.isdigit() and int(p) < len(PRIORITIES):
            priorities.append(int(p))
        else:
            raise BadInput(f"priority {p!r} is not 0-4 or one of {', '.join(PRIORITIES)}")
    age = params.get("age", "").strip()
    created_since = None
    if age:
        try:
            created_since = parse_duration(age)
        except ValueError:
            raise BadInput(f"age {age!r} is not a duration; write e.g. 30m, 2h or 1d") from None
    job_filter = JobFilter(
        statuses=statuses,
        queues=_names(params, "queue"),
        kinds=_names(params, "kind"),
        tenants=_names(params, "tenant"),
        created_since=created_since,
    )
    return job_filter, tuple(priorities), params.get("error", "").strip() or None


def _int_param(params: Mapping[str, str], key: str) -> int | None:
    raw = params.get(key, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) >= 2**63:
        raise BadInput(f"{key} {raw!r} is not a positive whole number")
    return int(raw)


def _pretty(value: Any) -> str:
    """A payload or error as indented JSON text (the template escapes it)."""
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False, sort_keys=True)


def build_app(source: Source, auth: Auth) -> Starlette:
    """The ASGI app over ``source``; see :func:`reconciler.web.create_app`."""
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["duration"] = lambda v: "" if v is None else format_duration(v)
    env.filters["pretty"] = _pretty
    env.filters["queue_label"] = queue_label
    env.filters["when"] = lambda v: "" if v is None else f"{v:%Y-%m-%d %H:%M:%S}"
    env.globals["PRIORITIES"] = PRIORITIES

    def render(
        request: Request,
        template: str,
        status_code: int = 200,
        choice: by_profile.Choice | None = None,
        **context: Any,
    ) -> Response:
        user = auth.user(request)
        page = env.get_template(template).render(
            request=request,
            user=user,
            auth_enabled=auth.enabled,
            csrf=auth.csrf(user) if user else "",
            choice=choice,
            href=choice.href if choice else _href,
            profile_fields=choice.param() if choice else {},
            **context,
        )
        return HTMLResponse(page, status_code=status_code)

    def problem(
        request: Request, message: str, status_code: int, choice: by_profile.Choice | None = None
    ) -> Response:
        return render(request, "problem.html", status_code, choice, message=message)

    def choose(name: str | None) -> by_profile.Choice:
        try:
            return by_profile.choose(source.settings, name)
        except (ProfileError, by_profile.ProfileUnknown) as exc:
            raise BadInput(str(exc)) from None

    def reading(
        page: Callable[[Request, by_profile.Choice], Response],
    ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            choice = None
            try:
                choice = choose(request.query_params.get("profile"))
                return await run_in_threadpool(page, request, choice)
            except BadInput as exc:
                return problem(request, str(exc), 400, choice)
            except (OpsError, ProfileError) as exc:
                return problem(request, str(exc), 409, choice)
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                    raise
                # A profile's table the dashboard's role was not granted (its owner's to grant).
                denied = str(exc.orig).splitlines()[0]
                return problem(
                    request,
                    f"the dashboard's database role may not read this: {denied}",
                    403,
                    choice,
                )

        return endpoint

    def overview(request: Request, choice: by_profile.Choice) -> Response:
        if not choice.native:
            bound = by_profile.bound(source.db, choice)
            found = by_profile.overview(source.db, source.settings, bound)
            return render(
                request,
                "profile_overview.html",
                choice=choice,
                p=bound.profile,
                data=found,
                refresh=REFRESH_S,
            )
        data = source.overview()
        now = data["now"]
        tiles = dict.fromkeys(STATUSES, 0)
        by_queue: dict[tuple[str, int], dict[str, int]] = {}
        for row in data["depth"]:
            tiles[row["status"]] = tiles.get(row["status"], 0) + row["jobs"]
            by_queue.setdefault((row["queue"], row["priority"]), {})[row["status"]] = row["jobs"]
        return render(
            request,
            "overview.html",
            choice=choice,
            data=data,
            tiles=tiles,
            by_queue=sorted(by_queue.items()),
            paused_names={p["queue"] for p in data["paused"]},
            statuses=STATUSES,
            refresh=REFRESH_S,
            throughput=charts.hourly(
                "succeeded per hour", data["throughput"], charts.SUCCEEDED, now
            ),
            failures=charts.hourly("failed per hour", data["throughput"], charts.FAILED, now),
        )

    def jobs(request: Request, choice: by_profile.Choice) -> Response:
        params = request.query_params
        if not choice.native:
            bound = by_profile.bound(source.db, choice)
            found = by_profile.jobs(source.db, bound, params, page=PAGE)
            next_params = found.pop("next_params")
            return render(
                request,
                "profile_jobs.html",
                choice=choice,
                p=bound.profile,
                params=params,
                next_url=choice.href("/jobs", **next_params) if next_params else None,
                **found,
            )
        job_filter, priorities, error_text = _filter(params)
        before = _int_param(params, "before")
        # An error-text search reads a bounded window, the newest jobs below the page's
        # position (ILIKE has no index); the next page searches the window below it.
        floor = source.search_floor(before) if error_text else None
        rows = source.jobs(
            job_filter,
            limit=PAGE + 1,
            priorities=priorities,
            error_text=error_text,
            before_id=before,
            floor_id=floor,
        )
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        kept = {k: v for k, v in params.items() if k not in ("before", "profile") and v}
        after = rows[-1]["id"] if more else floor
        next_url = choice.href("/jobs", **kept, before=after) if after else None
        searched = None
        if error_text and not more:
            searched = {"rows": SEARCH_EXAMINES, "floor": floor, "before": before}
        return render(
            request,
            "jobs.html",
            choice=choice,
            rows=rows,
            params=params,
            next_url=next_url,
            statuses=STATUSES,
            searched=searched,
        )

    def job(request: Request, choice: by_profile.Choice) -> Response:
        job_id: str = request.path_params["job_id"]
        if not choice.native:
            bound = by_profile.bound(source.db, choice)
            shown = by_profile.job(source.db, bound, job_id)
            if shown is None:
                return problem(
                    request,
                    f"no job with id {job_id[:80]} in {bound.profile.qualified}",
                    404,
                    choice,
                )
            return render(request, "profile_job.html", choice=choice, p=bound.profile, job=shown)
        found = source.job(int(job_id)) if job_id.isdigit() and int(job_id) < 2**63 else None
        if found is None:
            return problem(request, f"no job with id {job_id[:80]}", 404, choice)
        row, events = found
        return render(request, "job.html", choice=choice, job=row, events=events)

    def dead_letter(request: Request, choice: by_profile.Choice) -> Response:
        if not choice.native:
            bound = by_profile.bound(source.db, choice)
            found = by_profile.dead_letter(source.db, bound)
            return render(request, "profile_dead.html", choice=choice, p=bound.profile, **found)
        groups = source.dead_letter(JobFilter(statuses=("dead",), limit=100))
        return render(request, "dead.html", choice=choice, groups=groups)

    def runs(request: Request, choice: by_profile.Choice) -> Response:
        params = request.query_params
        task = params.get("task", "").strip() or None
        before = _int_param(params, "before")
        history, counts = source.runs(
            task=task,
            before_id=before,
            limit=PAGE + 1,
            profile=choice.current.name if choice.selector else None,
        )
        more = len(history) > PAGE
        history = history[:PAGE]
        next_url = choice.href("/runs", task=task, before=history[-1]["id"]) if more else None
        return render(
            request,
            "runs.html",
            choice=choice,
            history=history,
            counts=counts,
            task=task,
            next_url=next_url,
        )

    async def login_form(request: Request) -> Response:
        if not auth.token:
            return problem(request, "logging in needs RECONCILER_WEB_TOKEN to be set", 404)
        return render(request, "login.html", failed=False)

    async def login(request: Request) -> Response:
        if not auth.token:
            return problem(request, "logging in needs RECONCILER_WEB_TOKEN to be set", 404)
        form = await request.form()
        given = form.get("token")
        if not isinstance(given, str) or not auth.token_matches(given):
            return render(request, "login.html", 403, failed=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            auth.session(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(request: Request) -> Response:
        form = await request.form()
        user = auth.user(request)
        given = form.get("csrf")
        if user is None or not isinstance(given, str) or not auth.csrf_ok(user, given):
            return problem(request, "refused: the form's CSRF token is missing or wrong", 403)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def action(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ACTIONS:
            return problem(request, f"no action {name!r}", 404)
        user = auth.user(request)
        if user is None:
            why = (
                "log in with the token first"
                if auth.enabled
                else "the dashboard is read-only: set RECONCILER_WEB_TOKEN to allow actions"
            )
            return problem(request, f"refused: {why}", 403)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not auth.csrf_ok(user, form.get("csrf", "")):
            return problem(request, "refused: the form's CSRF token is missing or wrong", 403)
        confirmed = form.get("confirm") == "yes"
        try:
            choice = choose(form.get("profile"))
        except BadInput as exc:
            return problem(request, str(exc), 400)

        def act() -> by_profile.Outcome:
            if choice.native:
                return run_action(source, name, form, actor=f"web:{user}", confirmed=confirmed)
            return by_profile.run(
                source.db,
                source.settings,
                by_profile.bound(source.db, choice),
                name,
                form,
                actor=f"web:{user}",
                confirmed=confirmed,
            )

        try:
            outcome = await run_in_threadpool(act)
        except ActionsUnavailable as exc:
            return problem(request, str(exc), 403, choice)
        except (OpsError, TaskBusy, ProfileError) as exc:
            return problem(request, str(exc), 409, choice)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                raise
            return problem(
                request,
                "actions are unavailable: the dashboard's database role may only read "
                "(permission denied); run it as a role that may change jobs to act",
                403,
            )
        fields = {k: v for k, v in form.items() if k in _ACTION_FIELDS}
        return render(
            request,
            "confirm.html" if not confirmed else "done.html",
            choice=choice,
            outcome=outcome,
            title=ACTIONS[name],
            name=name,
            fields=fields,
        )

    async def export(request: Request) -> Response:
        """``dead-letter export`` to the browser: every dead job as JSON lines, recorded
        (not a backup: only a file written by the CLI counts for purge)."""
        user = auth.user(request)
        form = await request.form()
        given = form.get("csrf")
        if user is None or not isinstance(given, str) or not auth.csrf_ok(user, given):
            return problem(request, "refused: log in, and send the page's CSRF token", 403)
        job_filter = JobFilter(statuses=("dead",))

        def write() -> str:
            out = io.StringIO()
            written = write_export(source.db, job_filter, out)
            record_export(
                source.db,
                job_filter,
                written,
                destination="web download",
                actor=f"web:{user}",
                durable=False,
            )
            return out.getvalue()

        body = await run_in_threadpool(write)
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"content-disposition": 'attachment; filename="dead-letter.jsonl"'},
        )

    routes = [
        Route("/dead-letter/export", export, methods=["POST"]),
        Route("/", reading(overview)),
        Route("/jobs", reading(jobs)),
        Route("/jobs/{job_id}", reading(job)),
        Route("/dead-letter", reading(dead_letter)),
        Route("/runs", reading(runs)),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/actions/{name}", action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_SecurityHeaders)
    return app
