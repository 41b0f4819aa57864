"""Error answers: 422 in FastAPI's shape for every bad input, 503 that names Redis, never a bare 500.

A 422 never echoes the input (scripts are long, and may hold what the client would rather not see
in logs); it says where (``loc``) and why (``msg``). Bodies are ASCII-escaped JSON, so an answer
that quotes a key with a lone surrogate can still be sent.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger

from ..jobs import JobRejected
from ..store import UNREACHABLE, NotReplicated, redacted
from .context import context


class AsciiJSONResponse(JSONResponse):
    """JSON that can always be sent: errors may quote input with lone surrogates, which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def install(app: FastAPI) -> None:
    """Answer every refusal of the app as this module says."""
    for error in UNREACHABLE:
        app.add_exception_handler(error, _redis_unreachable)
    app.add_exception_handler(JobRejected, _job_rejected)
    app.add_exception_handler(NotReplicated, _not_replicated)
    app.add_exception_handler(RequestValidationError, _invalid_request)


def printable(key: Any) -> str | int:
    """A ``loc`` element that can be encoded: lone surrogates become backslash escapes."""
    if isinstance(key, int):
        return key
    return str(key).encode("utf-8", "backslashreplace").decode()


def validation_body(errors: list[dict[str, Any]]) -> AsciiJSONResponse:
    """FastAPI's 422 shape (``loc``, ``msg``, ``type``), without echoing the input (scripts are long)."""
    detail = [{"type": str(e.get("type", "value_error")), "loc": [printable(p) for p in e.get("loc", ())],
               "msg": str(e.get("msg", "invalid")).removeprefix("Value error, ")} for e in errors]
    return AsciiJSONResponse({"detail": detail}, status_code=422)


async def _invalid_request(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    return validation_body(list(error.errors()))


async def _job_rejected(_: Request, error: Exception) -> Response:
    """A job the model accepts but no node could run: the same 422 shape, at the field at fault."""
    assert isinstance(error, JobRejected)
    loc = ["body", *error.field.split(".")]
    return validation_body([{"type": "job_rejected", "loc": loc, "msg": error.reason}])


async def _redis_unreachable(request: Request, error: Exception) -> Response:
    """A 503 that names the problem, so that clients retry and operators know where to look."""
    url = redacted(context(request).settings.redis_url)
    logger.error("{} {}: Redis at {} is unreachable: {}", request.method, request.url.path, url, error)
    return JSONResponse({"detail": f"Redis at {url} is unreachable ({error}); try again shortly"},
                        status_code=503, headers={"Retry-After": "5"})


async def _not_replicated(request: Request, error: Exception) -> JSONResponse:
    """A 503: the submission reached the primary but no replica confirmed it, so it may not survive
    a failover; the detail names the job id so the client can look before submitting again."""
    logger.error("submission not confirmed by a replica: {}", error)
    return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "5"})
