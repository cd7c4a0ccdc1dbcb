"""The service's logs: text or JSON lines that carry the id of the request that wrote them, one line per
request, and start-up output without the internals of the embedded database, Alembic and uvicorn.

``configure_logging`` is called by ``palletreid serve`` (and by each of its worker processes); the app itself
never configures logging, so tests and embedding programs keep theirs. ``RequestLogMiddleware`` is always
installed: it assigns the request id (the client's sane ``X-Request-ID`` or a new one), echoes it in the
response and writes the request's line to the ``app.requests`` logger.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
import warnings
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.request_context import REQUEST_ID_HEADER, RequestContext, current_request, handling, request_id_from

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"

INTERNAL_LOGGERS = ("pgserver", "alembic")
"""Libraries whose INFO lines narrate their internals (initdb output, pg_ctl command lines, Alembic plugin
set-up, each revision run). Shown at DEBUG only; ``palletreid serve`` states the outcome in a line."""

UVICORN_CHATTER = re.compile(
    r"(Started|Finished) server process \[\d+\]"
    r"|(Started|Stopping) parent process \[\d+\]"
    r"|Waiting for child process \[\d+\]"
    r"|Waiting for application (startup|shutdown)\."
    r"|Application (startup|shutdown) complete\."
)
"""uvicorn's lifecycle messages, left out above DEBUG; its listen address, signals and errors stay."""

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Polled every few seconds by orchestrators and scrapers: their successful requests are logged at DEBUG."""

request_logger = logging.getLogger("app.requests")

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "request_tag",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (``None`` outside a request) to every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request = current_request()
            record.request_id = request.request_id if request is not None else None
        return True


class TextFormatter(logging.Formatter):
    """``time level logger [request id]: message``; the bracket only inside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, request_id, the record's extra fields,
    and the traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        entry.update((key, value) for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _DropUvicornChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return UVICORN_CHATTER.fullmatch(record.getMessage()) is None


def build_handler(log_format: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing ``log_format`` lines, with the request id, to ``stream`` (default stderr)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(log_format: LogFormat, level: str | int) -> None:
    """Root logging to stderr in ``log_format`` at ``level`` (replacing earlier handlers); the libraries'
    internals (:data:`INTERNAL_LOGGERS`, :data:`UVICORN_CHATTER`, a platformdirs warning pgserver causes) are
    shown only at DEBUG. uvicorn's loggers propagate to the root, so they are formatted the same."""
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level,
        handlers=[build_handler(log_format)],
        force=True,
    )
    logging.captureWarnings(True)  # warnings become log lines (JSON too), not raw stderr text
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    for name in INTERNAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    uvicorn_error = logging.getLogger("uvicorn.error")
    for existing in [f for f in uvicorn_error.filters if isinstance(f, _DropUvicornChatter)]:
        uvicorn_error.removeFilter(existing)
    if not debug:
        uvicorn_error.addFilter(_DropUvicornChatter())
        # pgserver asks platformdirs for a runtime directory that containers rarely have; it falls back fine.
        warnings.filterwarnings("ignore", module=r"platformdirs\.")


class RequestLogMiddleware:
    """Request id in, request id out, and one log line per request.

    Outermost middleware: its context holds for everything the request runs, the other middlewares included.
    An unexpected exception is answered with the app's handler for ``Exception`` inside that context (and
    not raised further: the handler has logged it).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next(
            (value.decode("latin-1") for name, value in scope["headers"] if name == b"x-request-id"), None
        )
        request = RequestContext(request_id_from(incoming))
        header = (REQUEST_ID_HEADER.lower().encode(), request.request_id.encode())
        started = time.perf_counter()
        status = 500
        started_response = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        with handling(request):
            try:
                await self.app(scope, receive, send_with_request_id)
            except Exception as error:
                # Rendered here, not by Starlette's outermost ServerErrorMiddleware, so that the handler's
                # log line (with the traceback) carries the request id and the 500 the X-Request-ID header.
                handler = getattr(scope.get("app"), "exception_handlers", {}).get(Exception)
                if started_response or handler is None:
                    raise
                response = handler(Request(scope, receive), error)
                if inspect.isawaitable(response):
                    response = await response
                await response(scope, receive, send_with_request_id)
            finally:
                _log_request(scope, request, status, time.perf_counter() - started)


def _log_request(scope: Scope, request: RequestContext, status: int, seconds: float) -> None:
    method, path = scope["method"], scope["path"]
    fields: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
    }
    if scope.get("client"):
        fields["client"] = scope["client"][0]
    text = f"{method} {path} {status} {seconds * 1000:.1f} ms"
    if request.decision is not None:
        fields.update(
            kind=request.kind, decision=request.decision, review=request.review, event_id=request.event_id
        )
        review = " for review" if request.review else ""
        text += f": {request.kind} {request.decision}{review}, event {request.event_id}"
    if request.stage_seconds:
        stages_ms = {stage: round(value * 1000, 1) for stage, value in request.stage_seconds.items()}
        fields["stages_ms"] = stages_ms
        text += " (" + ", ".join(f"{stage} {value:.1f}" for stage, value in stages_ms.items()) + " ms)"
    level = logging.DEBUG if path in PROBE_PATHS and status < 400 else logging.INFO
    request_logger.log(level, text, extra=fields)
