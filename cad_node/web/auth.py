"""Who may use the web server: the API's bearer token and the console's logins and sessions.

Secrets are compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials

from cad_node.settings import Settings

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


# The ops console: a password (or the API token), signed session cookies, CSRF tokens ----------

PBKDF2 = "pbkdf2_sha256"
PBKDF2_ITERATIONS = 600_000


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>`` of a password, for the settings."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{PBKDF2}${iterations}${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    """True when ``password`` hashes to ``stored`` (a :func:`hash_password` string)."""
    try:
        scheme, iterations, salt, expected = stored.strip().split("$")
        if scheme != PBKDF2:
            return False
        digest = hashlib.pbkdf2_hmac(
            "sha256", password.encode("utf-8"), bytes.fromhex(salt), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), expected.lower())


@dataclass(frozen=True)
class ConsoleSession:
    """A logged-in user: who, until when, and the CSRF token of their action forms."""

    user: str
    expires: int
    """Unix time."""
    csrf: str


class ConsoleAuth:
    """Checks logins and signs and reads session cookies (HMAC-SHA256 over the session)."""

    def __init__(self, settings: Settings) -> None:
        self.user = settings.http_user
        self.password_hash = settings.http_password_hash.get_secret_value()
        self.token_digest = expected_digest(settings.http_token.get_secret_value())
        self.lifetime = int(settings.http_session_hours * 3600)
        secret = settings.http_session_secret.get_secret_value()
        self._key = secret.encode("utf-8") if secret else secrets.token_bytes(32)

    @property
    def configured(self) -> bool:
        """False when neither a password hash nor a token is set: nobody can log in."""
        return bool(self.password_hash) or self.token_digest is not None

    def check_login(self, user: str, password: str) -> bool:
        """The configured user with the password (when a hash is set) or else the API token."""
        if not hmac.compare_digest(user.encode("utf-8"), self.user.encode("utf-8")):
            return False
        if self.password_hash:
            return password_matches(password, self.password_hash)
        return token_matches(password, self.token_digest)

    def new_session(self, user: str, now: float | None = None) -> tuple[ConsoleSession, str]:
        """A fresh session and its cookie value."""
        now = time.time() if now is None else now
        session = ConsoleSession(user, int(now) + self.lifetime, secrets.token_urlsafe(24))
        payload = base64.urlsafe_b64encode(
            json.dumps([session.user, session.expires, session.csrf]).encode("utf-8")
        ).decode("ascii")
        return session, f"{payload}.{self._sign(payload)}"

    def read_session(self, cookie: str | None, now: float | None = None) -> ConsoleSession | None:
        """The session a cookie carries; None when absent, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        payload, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            user, expires, csrf = json.loads(base64.urlsafe_b64decode(payload))
            session = ConsoleSession(str(user), int(expires), str(csrf))
        except (ValueError, TypeError):
            return None
        if session.expires <= (time.time() if now is None else now):
            return None
        return session

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).hexdigest()
