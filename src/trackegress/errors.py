"""Errors a caller sees, with their Twirp code: one argument order, ``(code, message)``, everywhere."""

from __future__ import annotations

# Twirp error codes (twitchtv/twirp errors.go); psrpc spells the shared ones the same way (psrpc errors.go)
CANCELED = "canceled"
UNKNOWN = "unknown"
INVALID_ARGUMENT = "invalid_argument"
MALFORMED = "malformed"
DEADLINE_EXCEEDED = "deadline_exceeded"
NOT_FOUND = "not_found"
BAD_ROUTE = "bad_route"
ALREADY_EXISTS = "already_exists"
PERMISSION_DENIED = "permission_denied"
UNAUTHENTICATED = "unauthenticated"
RESOURCE_EXHAUSTED = "resource_exhausted"
FAILED_PRECONDITION = "failed_precondition"
ABORTED = "aborted"
OUT_OF_RANGE = "out_of_range"
UNIMPLEMENTED = "unimplemented"
INTERNAL = "internal"
UNAVAILABLE = "unavailable"
DATALOSS = "dataloss"
# psrpc-only error codes
MALFORMED_REQUEST = "malformed_request"

# Twirp error code → HTTP status (twitchtv/twirp errors.go)
HTTP_STATUS = {
    CANCELED: 408, UNKNOWN: 500, INVALID_ARGUMENT: 400, MALFORMED: 400, DEADLINE_EXCEEDED: 408,
    NOT_FOUND: 404, BAD_ROUTE: 404, ALREADY_EXISTS: 409, PERMISSION_DENIED: 403, UNAUTHENTICATED: 401,
    RESOURCE_EXHAUSTED: 429, FAILED_PRECONDITION: 412, ABORTED: 409, OUT_OF_RANGE: 400,
    UNIMPLEMENTED: 501, INTERNAL: 500, UNAVAILABLE: 503, DATALOSS: 500,
}
# psrpc error codes that Twirp spells differently (psrpc ErrorCode.ToTwirp)
_FROM_PSRPC = {
    MALFORMED_REQUEST: MALFORMED, "malformed_result": MALFORMED, "data_loss": DATALOSS,
    "upstream_server_error": INTERNAL, "upstream_client_error": INVALID_ARGUMENT,
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


class EgressFailure(CodedError):
    """Ends the egress FAILED with ``message``; ``error_code`` is the HTTP status of the Twirp ``code``."""


def twirp_code(psrpc_code: str) -> str:
    """The Twirp code for a psrpc error code (``unknown`` for codes Twirp has no name for)."""
    code = _FROM_PSRPC.get(psrpc_code, psrpc_code)
    return code if code in HTTP_STATUS else UNKNOWN
