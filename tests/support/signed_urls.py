"""Checks a GCS V4 signed URL the way Google does, from the URL alone: fake-gcs-server serves any GET and ignores
every signing parameter, so the upload tests verify the signature here, with the service account's public key.

The checks follow Google's "V4 signing process" documentation (canonical request over the decoded-then-re-encoded
path, the sorted query without ``X-Goog-Signature`` and the signed ``host`` header; RSA PKCS#1 v1.5 over SHA-256).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

GCS_MAX_EXPIRES = 604800  # 7 days, Google's limit for V4 signed URLs
_FIELDS = ("X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date", "X-Goog-Expires", "X-Goog-SignedHeaders",
           "X-Goog-Signature")


def gcs_v4_problem(url: str, credentials_json: str, now: datetime.datetime) -> str:
    """'' if Google would accept ``url`` as a GET signed by the service account in ``credentials_json`` at ``now``;
    otherwise what is wrong with it."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    params = dict(pairs)
    if len(params) != len(pairs):
        return "a query parameter is repeated"
    missing = [name for name in _FIELDS if name not in params]
    if missing:
        return f"missing {', '.join(missing)}"
    signature = params.pop("X-Goog-Signature")
    if params["X-Goog-Algorithm"] != "GOOG4-RSA-SHA256":
        return f"algorithm {params['X-Goog-Algorithm']}"
    account = json.loads(credentials_json)
    email, _, scope = params["X-Goog-Credential"].partition("/")
    timestamp = params["X-Goog-Date"]
    if email != account["client_email"]:
        return f"credential names {email}, not {account['client_email']}"
    if scope != f"{timestamp[:8]}/auto/storage/goog4_request":
        return f"credential scope {scope!r} does not match X-Goog-Date {timestamp}"
    signed_at = datetime.datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    expires = int(params["X-Goog-Expires"])
    if not 1 <= expires <= GCS_MAX_EXPIRES:
        return f"X-Goog-Expires {expires} is outside 1..{GCS_MAX_EXPIRES}"
    if not signed_at - datetime.timedelta(minutes=15) <= now <= signed_at + datetime.timedelta(seconds=expires):
        return f"not valid at {now:%Y-%m-%dT%H:%M:%SZ} (signed {timestamp}, for {expires}s)"
    if params["X-Goog-SignedHeaders"] != "host":
        return f"signed headers {params['X-Goog-SignedHeaders']!r}, expected 'host' only"
    path = quote(unquote(parts.path), safe="/~")
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(params.items()))
    canonical = "\n".join(["GET", path, query, f"host:{parts.netloc.lower()}\n", "host", "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["GOOG4-RSA-SHA256", timestamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = serialization.load_pem_private_key(account["private_key"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    try:
        key.public_key().verify(bytes.fromhex(signature), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return "the signature does not match"
    return ""
