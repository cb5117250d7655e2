"""``reconciler web [--addr HOST:PORT]``: serve the dashboard with uvicorn until Ctrl-C."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from reconciler.db import Database
from reconciler.probes import parse_addr
from reconciler.settings import Settings

__all__ = ["add_web_command", "cmd_web", "exposed_without_token"]


def _addr(value: str) -> str:
    try:
        parse_addr(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def add_web_command(sub: Any) -> None:
    web = sub.add_parser(
        "web", help="serve the dashboard (RECONCILER_WEB_ADDR, default 127.0.0.1:8080)"
    )
    web.add_argument(
        "--addr", type=_addr, metavar="HOST:PORT", help="overrides RECONCILER_WEB_ADDR"
    )
    web.set_defaults(handler=cmd_web, needs="schema")


def exposed_without_token(host: str, settings: Settings) -> bool:
    """True when ``host`` is reachable from other machines and nobody needs a token."""
    if settings.web_token is not None:
        return False
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may well resolve to an outside address
        return True


def cmd_web(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    import uvicorn

    from reconciler.web import create_app

    addr = args.addr or settings.web_addr
    host, port = parse_addr(addr)
    if exposed_without_token(host, settings):
        sys.stderr.write(
            f"reconciler web: warning: serving on {addr}, reachable from other machines, "
            "without RECONCILER_WEB_TOKEN: anyone who reaches it reads every job's payload\n"
        )
    app = create_app(settings, db=db)
    sys.stderr.write(f"reconciler web: serving the dashboard on http://{addr}/\n")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
