"""What the project's Flask apps share: reading a JSON body whatever its Content-Type says, and a
JSON answer for every failure, never an HTML page or a stack trace: {"error": "..."} with the
right status."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import orjson
from flask import Flask, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge


class ApiError(Exception):
    """An answer other than success: its status, message, extra body fields and headers."""

    def __init__(self, status: int, message: str, body: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = {**(body or {}), "error": message}
        self.headers = headers or {}


def json_error(status: int, message: str, headers: dict | None = None):
    return {"error": message}, status, headers or {}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def json_body():
    """The request's parsed body (strict JSON: no NaN or Infinity); ApiError(400) otherwise.

    orjson parses it (the ingest API's hot path); what it refuses and JSON allows (a lone
    surrogate escape, nesting deeper than 1024) goes to the standard library, so that such a
    body is judged by its content like any other."""
    data = request.get_data(cache=False)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "body is not valid JSON") from None


def add_json_error_handlers(app: Flask, log: logging.Logger, endpoints: str) -> None:
    """ApiError, unknown paths (naming ``endpoints``), wrong methods, other HTTP errors and
    unexpected exceptions (logged with their traceback, answered 500 without it)."""

    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return err.body, err.status, err.headers

    @app.errorhandler(NotFound)
    def not_found(_err):
        return json_error(404, f"no such endpoint: {request.path} (there are {endpoints})")

    @app.errorhandler(MethodNotAllowed)
    def wrong_method(err: MethodNotAllowed):
        allowed = ", ".join(sorted(err.valid_methods or ()))
        return json_error(405, f"{request.method} is not allowed on {request.path}; "
                               f"use {allowed}", {"Allow": allowed})

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_err):
        return json_error(413, f"body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes")

    @app.errorhandler(HTTPException)
    def other_http_error(err: HTTPException):
        return json_error(err.code or 500, err.description or err.name)

    @app.errorhandler(Exception)
    def internal_error(_err):
        log.exception("request %s %s failed", request.method, request.path)
        return json_error(500, "internal error")


OPENAPI_PATH = "/openapi.json"


def add_openapi_route(app: Flask, document: Path, adjust=None) -> None:
    """GET /openapi.json: the API's OpenAPI document, the file kept beside its code, read once
    and, when ``adjust`` is given, changed by it (a function of the parsed document: the
    settings' values in place of the defaults the file names)."""
    parsed = json.loads(document.read_bytes())
    if adjust is not None:
        adjust(parsed)
    body = json.dumps(parsed, ensure_ascii=False, indent=1).encode("utf-8")

    @app.get(OPENAPI_PATH)
    def openapi():
        return body, 200, {"Content-Type": "application/json", "Cache-Control": "no-cache"}
