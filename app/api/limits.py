"""The request-body size limit, answered in the API's ``{"type", "detail"}`` shape.

A declared ``Content-Length`` over the limit is refused before a byte of the body is read; a body without one
(chunked) is counted while it streams and refused as soon as it passes the limit, so an upload never costs
more than ``max_bytes`` of memory or disk.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RequestTooLargeError


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse(
                status_code=RequestTooLargeError.status_code,
                content={"type": RequestTooLargeError.error_type, "detail": self._detail()},
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException raised while the body is parsed reaches the app's error handler as is.
                    raise HTTPException(status_code=RequestTooLargeError.status_code, detail=self._detail())
            return message

        await self.app(scope, receive_within_limit, send)

    def _detail(self) -> str:
        return f"request body exceeds {self.max_bytes} bytes"
