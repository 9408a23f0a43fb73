"""Refuse oversized request bodies while they stream in, not after they were read."""
from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """413 when Content-Length or the bytes received so far pass `max_bytes`.

    The limit covers the whole body; the image limit itself is checked on the file part, so the
    allowance for multipart headers and the prompt is added by the caller."""

    def __init__(self, app: ASGIApp, max_bytes: int, message: str, larger: dict[str, int] | None = None):
        """`larger`: exact paths with a limit of their own (a model upload is far larger than an image)."""
        self.app, self.max_bytes, self.message = app, max_bytes, message
        self.larger = larger or {}

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"error": {"code": "too_large", "message": self.message}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes = self.larger.get(scope["path"].rstrip("/"), self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return await self._reject(send)
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)
