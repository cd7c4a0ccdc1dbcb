"""What the service knows about the request being handled: its id, and for a receipt or dispatch its kind,
decision and stage timings.

Set by :class:`app.logging_setup.RequestLogMiddleware` in a context variable for the whole request. The
object is shared, not copied: threads that run request work (``run_in_threadpool`` copies the context, the
model's worker thread runs in a copy too) see the same object, so what they note shows in the request's log
line. Outside a request (offline tools, the webhook worker) :func:`current_request` is ``None`` and the
``note_*`` functions do nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._~:/+=@-]{1,128}$")
"""Accepted incoming ids: short, printable, no spaces or quotes (they end up in log lines and headers)."""


@dataclass
class RequestContext:
    request_id: str
    kind: str | None = None
    """``receipt`` or ``dispatch`` once the request records one; stages are timed only then."""
    decision: str | None = None
    review: bool | None = None
    event_id: int | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per stage of this request (decode, detect, forward, features, search, verify, store, commit)"""


_current: ContextVar[RequestContext | None] = ContextVar("palletreid_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


@contextmanager
def handling(request: RequestContext) -> Iterator[RequestContext]:
    """``request`` is the current request while the block runs (in this task and what it hands work to)."""
    token = _current.set(request)
    try:
        yield request
    finally:
        _current.reset(token)


def request_id_from(incoming: str | None) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new random id."""
    if incoming is not None and _SANE_REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def note_recording(kind: str) -> None:
    """This request records a ``kind`` event (``receipt``/``dispatch``): its stages are timed from now."""
    request = _current.get()
    if request is not None:
        request.kind = kind


def note_outcome(decision: str, *, review: bool, event_id: int) -> None:
    """The recording's outcome, for the request's log line."""
    request = _current.get()
    if request is not None:
        request.decision, request.review, request.event_id = decision, review, event_id
