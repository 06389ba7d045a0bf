"""Error objects as the OpenAI API answers them: ``{"error": {"message", "type", "param", "code"}}`` with the
HTTP status the SDKs map to their exceptions (400 BadRequestError, 401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 411, 413, 422, 429 RateLimitError, 5xx)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request refused. ``message`` never repeats what the caller sent beyond a parameter's name."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def unknown_parameter(param: str) -> ApiError:
    return ApiError(
        400, f"Unrecognized request argument supplied: {param}", "invalid_request_error", "unknown_parameter", param
    )


def not_found(what: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"{what} not found", "invalid_request_error", "not_found", param)


def unauthenticated() -> ApiError:
    return ApiError(
        401,
        "Incorrect API key provided: use a Kubernetes bearer token (a ServiceAccount token or your OIDC token)",
        "invalid_request_error",
        "invalid_api_key",
    )


def forbidden(verb: str, resource: str) -> ApiError:
    return ApiError(
        403,
        f"You may not {verb} {resource} in this project: ask for a RoleBinding in the namespace",
        "invalid_request_error",
        "permission_denied",
    )


def too_large(limit: int, param: str | None = None) -> ApiError:
    return ApiError(
        413, f"The request is larger than {limit} bytes", "invalid_request_error", "request_too_large", param
    )


def length_required() -> ApiError:
    return ApiError(
        411, "Send the upload with a Content-Length header", "invalid_request_error", "length_required", "file"
    )


def rate_limited() -> ApiError:
    return ApiError(429, "Too many requests: slow down and retry", "requests", "rate_limit_exceeded")


def unavailable() -> ApiError:
    return ApiError(503, "The Kubernetes API or the file store did not answer: retry", "server_error", "unavailable")
