"""The dashboard: ``reconciler web``, or mounted in your own ASGI service.

    from reconciler.web import create_app
    app.mount("/reconciler", create_app())   # FastAPI or Starlette

Pages read the queue as the CLI's commands do; actions run the operator
commands' own changes (see :mod:`reconciler.web.actions`), only for a user the
token or the authenticating proxy names (:mod:`reconciler.web.auth`). With
profiles, ``?profile=NAME`` picks the queue table (:mod:`reconciler.web.profiles`).
"""

from __future__ import annotations

from starlette.applications import Starlette

from reconciler.app import open_database
from reconciler.db import Database
from reconciler.schedule import load_schedule
from reconciler.settings import Settings, load_settings
from reconciler.web.app import build_app
from reconciler.web.auth import Auth
from reconciler.web.data import Source

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, db: Database | None = None) -> Starlette:
    """The dashboard as an ASGI app: ``settings`` (default: from the environment) say
    which database, token and proxy header; ``db`` an already open database to use."""
    settings = settings or load_settings()
    if db is None:
        db, _ = open_database(settings, application_name="reconciler-web", pool_size=4)
    source = Source(db, settings, load_schedule(settings.schedule_file))
    return build_app(source, Auth.from_settings(settings))
