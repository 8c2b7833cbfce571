"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}`, as vLLM's server answers.

The `type` names are vLLM's (BadRequestError, NotFoundError, ...); `code` is the HTTP status.
"""
from __future__ import annotations

from http import HTTPStatus

TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError", 413: "RequestEntityTooLarge", 499: "ClientClosedRequest",
         500: "InternalServerError", 503: "ServiceUnavailableError"}


class APIError(Exception):
    """A request the server refuses; str(error) is the message the client gets."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str | None = None):
        super().__init__(message)
        self.status, self.param, self.type = status, param, type_


def error_body(status: int, message: str, param: str | None = None, type_: str | None = None) -> dict:
    if type_ is None:
        type_ = TYPES.get(status) or _phrase(status)
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        return "Error"
