"""Errors a caller sees, with their Twirp code: one argument order, ``(code, message)``, everywhere."""

from __future__ import annotations

INVALID_ARGUMENT = "invalid_argument"
UNIMPLEMENTED = "unimplemented"

# Twirp error code → HTTP status (twitchtv/twirp errors.go)
HTTP_STATUS = {
    "canceled": 408, "unknown": 500, "invalid_argument": 400, "malformed": 400, "deadline_exceeded": 408,
    "not_found": 404, "bad_route": 404, "already_exists": 409, "permission_denied": 403, "unauthenticated": 401,
    "resource_exhausted": 429, "failed_precondition": 412, "aborted": 409, "out_of_range": 400,
    "unimplemented": 501, "internal": 500, "unavailable": 503, "dataloss": 500,
}
# psrpc error codes that Twirp spells differently (psrpc ErrorCode.ToTwirp)
_FROM_PSRPC = {
    "malformed_request": "malformed", "malformed_result": "malformed", "data_loss": "dataloss",
    "upstream_server_error": "internal", "upstream_client_error": "invalid_argument",
}


class CodedError(ValueError):
    """A refusal with a Twirp error ``code`` and a ``message`` fit to show the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RequestError(CodedError):
    """A request we refuse; nothing was started or changed."""


class ConfigError(CodedError):
    """A setting is missing or invalid (``invalid_argument``), or names something unsupported (``unimplemented``)."""


def twirp_code(psrpc_code: str) -> str:
    """The Twirp code for a psrpc error code (``unknown`` for codes Twirp has no name for)."""
    code = _FROM_PSRPC.get(psrpc_code, psrpc_code)
    return code if code in HTTP_STATUS else "unknown"
