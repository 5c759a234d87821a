"""Twirp request auth, as livekit-server does it: a Bearer JWT from the API key with ``video.roomRecord``."""

from __future__ import annotations

import jwt
from livekit import api

from trackegress.errors import PERMISSION_DENIED, UNAUTHENTICATED, RequestError


class Authenticator:
    """Checks ``Authorization: Bearer <JWT>`` headers against one API key and secret."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self._verifier = api.TokenVerifier(api_key, api_secret)

    def require_record(self, header: str | None) -> api.access_token.Claims:
        """The token's claims if it grants ``roomRecord``; ``RequestError`` (unauthenticated or
        permission_denied) otherwise."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestError(UNAUTHENTICATED, "missing Bearer token in the Authorization header")
        try:
            claims = self._verifier.verify(token.strip())
        except Exception as exc:  # PyJWT errors, and odd claims TokenVerifier cannot map
            raise RequestError(UNAUTHENTICATED, f"invalid token: {_reason(exc)}") from None
        if claims.video is None or claims.video.room_record is not True:
            raise RequestError(PERMISSION_DENIED, "permissions denied: the token lacks video.roomRecord")
        return claims


def _reason(exc: Exception) -> str:
    """PyJWT's fixed messages ("Signature has expired", "Invalid issuer", ...); a class name otherwise."""
    if isinstance(exc, jwt.PyJWTError) and str(exc):
        return str(exc)
    return f"unreadable claims ({type(exc).__name__})"
