"""The ASGI guard: token, body size and body encoding, checked before FastAPI sees a request.

A plain ASGI layer rather than FastAPI dependencies, because the order matters: the bearer token
first, so a client without it learns nothing (not even whether its body would parse); then the
body size limit, so an oversized body is refused before it is parsed or stored; then UTF-8, so
that every bad body is a 422 that names the body. Oversized bodies get 422 rather than 413
because the API's contract counts "body over a size limit" among the bad inputs answered 422, in
FastAPI's shape, with ``loc: ["body"]``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .. import jobs
from .errors import AsciiJSONResponse

MAX_BODY_BYTES = 2 << 20  # a script may be 1 MiB (jobs.MAX_SCRIPT_BYTES); JSON escaping needs headroom
OPEN_PATHS = frozenset({"/healthz"})  # answered without a token: a liveness probe carries no secret

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body is over the limit; the message says by how much and what the limits are."""


class ClientGone(Exception):
    """The client disconnected while sending its body: there is no one to answer."""


class Guard:
    """Token, body size and body encoding checks, before routing or parsing.

    The token comes first: a request without it is answered 401 before a single byte of its
    body is read, so an anonymous client cannot make the API buffer megabytes (a client that
    sends ``Expect: 100-continue`` is not even asked for its body). Only then is the body read
    whole (it is small by construction) and handed on; it is read even when the answer is "too
    large", because a server that answers and closes while request data is still unread makes
    the client's TCP stack drop the answer. Reading is not parsing: nothing of a refused body is
    interpreted.
    """

    DRAIN_LIMIT = 64 << 20  # beyond this a client is not making a mistake: answer without reading on

    def __init__(self, app: ASGIApp, token: str, max_body: int) -> None:
        self.app = app
        self.token = token.encode()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            # Connection: close, since the unread body cannot be the next request on this connection.
            await _send_json(scope, _unread, send, 401, {"detail": self._why_unauthorized(scope)},
                             {"WWW-Authenticate": 'Bearer realm="conductor"', "Connection": "close"})
            return
        try:
            body = await self._read_body(scope, receive)
            problem = _not_utf8(body)
        except BodyTooLarge as error:
            body, problem = b"", {"type": "body_too_large", "loc": ["body"], "msg": str(error)}
        except ClientGone:
            return
        if problem:
            await _send_json(scope, receive, send, 422, {"detail": [problem]})
        else:
            await self.app(scope, _replay(body, receive), send)

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, credentials = _header(scope, b"authorization").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)

    @staticmethod
    def _why_unauthorized(scope: Scope) -> str:
        if not _header(scope, b"authorization"):
            return "authentication required: send the header 'Authorization: Bearer <API_TOKEN>'"
        return "the bearer token is wrong: send 'Authorization: Bearer <API_TOKEN>' with the node's API_TOKEN"

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.DRAIN_LIMIT:
            raise BodyTooLarge(self._too_large(int(declared)))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body:
                chunks.append(chunk)
            elif size > self.DRAIN_LIMIT:
                break
            more = message.get("more_body", False)
        if size > self.max_body:
            raise BodyTooLarge(self._too_large(size))
        return b"".join(chunks)

    def _too_large(self, size: int) -> str:
        return (f"the request body has {size} bytes or more; the API accepts at most {self.max_body} bytes "
                f"({self.max_body >> 20} MiB), and a job script at most {jobs.MAX_SCRIPT_BYTES} bytes")


async def _unread() -> Message:
    """The ``receive`` of a refused request: the body stays unread (a response needs none of it)."""
    return {"type": "http.disconnect"}


def _not_utf8(body: bytes) -> dict[str, Any] | None:
    """JSON between systems is UTF-8 (RFC 8259); anything else would reach FastAPI as an opaque 400."""
    try:
        body.decode()
    except UnicodeDecodeError as error:
        return {"type": "json_invalid", "loc": ["body", error.start],
                "msg": f"the body is not UTF-8 text (byte {error.start}): send JSON encoded in UTF-8"}
    return None


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return b""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body read already, then waits for the client as usual."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send_json(scope: Scope, receive: Receive, send: Send, status: int, content: Any,
                     headers: dict[str, str] | None = None) -> None:
    await AsciiJSONResponse(content, status_code=status, headers=headers)(scope, receive, send)
