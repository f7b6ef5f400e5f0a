"""The API's bearer token: compared in constant time, as a SHA-256 digest, never logged."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials

HASH_PREFIX = "sha256:"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def expected_digest(configured: str) -> str | None:
    """The SHA-256 hex digest a presented token must have; None when no token is configured.

    The setting holds the token as given or, better, ``sha256:<hex digest>`` of it.
    """
    configured = configured.strip()
    if not configured:
        return None
    if configured.startswith(HASH_PREFIX):
        return configured[len(HASH_PREFIX) :].strip().lower()
    return _digest(configured)


def token_matches(presented: str, expected: str | None) -> bool:
    """True when ``presented`` is the configured token (constant time in its content)."""
    if expected is None:
        return False
    return hmac.compare_digest(_digest(presented), expected)


def require_token(credentials: HTTPAuthorizationCredentials | None, expected: str | None) -> None:
    """Raise 401 unless the request carries the configured bearer token."""
    if credentials is None or not token_matches(credentials.credentials, expected):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
