"""Who may act on the dashboard, and the CSRF token of every form that changes something.

Read-only unless ``RECONCILER_WEB_TOKEN`` or ``RECONCILER_WEB_USER_HEADER`` is set:

- token: the login form takes the token (compared in constant time); the
  session cookie (HttpOnly, SameSite=Strict) holds an HMAC of it, never the
  token itself; the actor is ``web:token``.
- proxy header: an authenticating reverse proxy names the user in that header;
  the actor is ``web:<user>``. Only behind such a proxy: anyone else can send it.

Every state-changing form carries a CSRF token, an HMAC of the actor under a
key derived from the token (or, with the header alone, a key made at start-up),
checked with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from starlette.requests import Request

from reconciler.settings import Settings

__all__ = ["COOKIE", "Auth"]

COOKIE = "reconciler_session"
# A user name from the proxy header, as it goes into the actor: printable, short.
_USER = re.compile(r"[\w.@+-]{1,64}")


@dataclass(frozen=True)
class Auth:
    token: str | None
    user_header: str | None
    key: bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        token = settings.web_token.get_secret_value() if settings.web_token else None
        key = (
            hashlib.sha256(b"reconciler-web:" + token.encode()).digest()
            if token
            else secrets.token_bytes(32)
        )
        return cls(token, settings.web_user_header, key)

    @property
    def enabled(self) -> bool:
        """False: the dashboard is read-only for everybody."""
        return bool(self.token or self.user_header)

    def _mac(self, message: str) -> str:
        return hmac.new(self.key, message.encode(), hashlib.sha256).hexdigest()

    def session(self) -> str:
        """The session cookie's value after a login with the token."""
        return self._mac("session")

    def token_matches(self, given: str) -> bool:
        if not self.token:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def user(self, request: Request) -> str | None:
        """The acting user (``alice`` from the proxy, ``token`` after a login), or None."""
        if self.user_header:
            named = request.headers.get(self.user_header, "").strip()
            if _USER.fullmatch(named):
                return named
        cookie = request.cookies.get(COOKIE)
        if self.token and cookie and hmac.compare_digest(cookie, self.session()):
            return "token"
        return None

    def csrf(self, user: str) -> str:
        """The CSRF token of ``user``'s forms."""
        return self._mac(f"csrf:{user}")

    def csrf_ok(self, user: str, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf(user).encode())
