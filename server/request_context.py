"""Every answer carries an `X-Request-ID`; an unhandled exception is a JSON 500 that names that id.

The outermost middleware of the app (inside only Starlette's own ServerErrorMiddleware, which then never
sees an exception): it gives each request an id (the client's own `X-Request-ID` when it is a short
token, else a new one), adds it to the answer's headers, and turns any exception that escaped the routes
into `500 {"error": {"code": "internal", "message": "internal error (request id X)"}}`. The exception
itself, with its traceback, goes to the server log on a line naming the same id; nothing of it goes to
the client."""
from __future__ import annotations

import json
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("uvicorn.error")  # the server's error log (uvicorn gives it a handler)
HEADER = b"x-request-id"
CLIENT_ID = re.compile(rb"^[A-Za-z0-9_.-]{8,64}$")


def request_id(scope: Scope) -> str:
    """The id of a request this middleware has seen ("" otherwise)."""
    return scope.get("state", {}).get("request_id", "")


class RequestContext:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(HEADER, b"")
        rid = given.decode() if CLIENT_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid.encode())]}
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as err:
            log.error("request %s %s %s failed: unhandled %s", rid, scope.get("method"), scope.get("path"),
                      type(err).__name__, exc_info=err)
            if started:  # the answer is under way: all that is left is to end the connection
                raise
            body = json.dumps({"error": {"code": "internal", "message": f"internal error (request id {rid})"}}).encode()
            await send_with_id({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
            await send_with_id({"type": "http.response.body", "body": body})
