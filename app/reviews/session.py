"""The review page's login: an admin key exchanged for a signed, expiring cookie with a CSRF token.

The cookie holds ``{"name", "exp", "csrf"}`` and an HMAC-SHA256 over it: nothing is kept on the server, so
any worker can check it as long as all share the secret (``PALLETREID_REVIEW_SESSION_SECRET``; unset, each
process draws a random one, so sessions end with a restart and need one worker). It is ``HttpOnly`` (scripts
cannot read it) and ``SameSite=Strict`` (other sites cannot make the browser send it); every form carries the
cookie's CSRF token, which a page of another origin cannot know. The key's name must still be an admin of
the key ring on every request, so revoking the key ends its sessions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from app.security import KeyRing, Role

COOKIE_NAME = "palletreid_review"
SESSION_SECONDS = 8 * 3600


@dataclass(frozen=True, slots=True)
class ReviewSession:
    name: str
    csrf: str
    expires: int


class SessionSigner:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def issue(self, name: str, *, now: float | None = None) -> tuple[str, ReviewSession]:
        """A new session for ``name``: the cookie value and what it holds."""
        session = ReviewSession(
            name=name, csrf=secrets.token_urlsafe(24), expires=int((now or time.time()) + SESSION_SECONDS)
        )
        payload = base64.urlsafe_b64encode(
            json.dumps({"name": session.name, "csrf": session.csrf, "exp": session.expires}).encode()
        ).decode()
        return f"{payload}.{self._sign(payload)}", session

    def read(
        self, cookie: str | None, key_ring: KeyRing, *, now: float | None = None
    ) -> ReviewSession | None:
        """The session of a valid, unexpired cookie whose key is still an admin; otherwise ``None``."""
        if not cookie or "." not in cookie:
            return None
        payload, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            values = json.loads(base64.urlsafe_b64decode(payload))
            session = ReviewSession(
                name=str(values["name"]), csrf=str(values["csrf"]), expires=int(values["exp"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < (now or time.time()):
            return None
        if key_ring.enabled and key_ring.roles().get(session.name) is not Role.ADMIN:
            return None
        return session

    def _sign(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()
