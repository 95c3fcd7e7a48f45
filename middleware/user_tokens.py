"""End-user tokens: short-lived JWTs (HS256, PyJWT) that let one end user act as themselves only.

The app backend (holding the app key) mints one with `POST /v1/user-tokens {"user", "ttl_s"}` and
hands it to the browser or device; a call with `Authorization: Bearer <user token>` is bound to that
tenant and user. Keys come from `PERSONA_USER_TOKEN_KEYS`: a JSON list of secrets, or a map
kid -> secret. The first key signs new tokens; every listed key verifies, so a key is rotated by
putting the new one first and dropping the old one once its tokens have expired. With no keys in
development a random key is made per process (tokens die with it and are not shared between
processes); in production minting is refused until keys are set.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

import jwt

from middleware.config import Settings
from middleware.errors import AuthenticationFailed, PersonaError

log = logging.getLogger("middleware.identity")
ALGORITHM = "HS256"
ISSUER = "persona-middleware"
AUDIENCE = "persona-end-user"
MIN_KEY_CHARS = 32
MIN_TTL_S, MAX_TTL_S = 60, 86_400


def looks_like_user_token(token: str) -> bool:
    """A JWT (three base64url parts, a JSON header); app keys never look like one."""
    return token.startswith("eyJ") and token.count(".") == 2


@dataclass(frozen=True)
class UserClaims:
    tenant: str
    user: str
    expires_at: int


class UserTokens:
    def __init__(self, settings: Settings) -> None:
        configured = settings.user_token_keys
        if isinstance(configured, dict):
            keys = {kid: secret.get_secret_value() for kid, secret in configured.items()}
        else:
            keys = {self._kid(s.get_secret_value()): s.get_secret_value() for s in configured}
        for kid, secret in keys.items():
            if len(secret) < MIN_KEY_CHARS:
                raise ValueError(
                    f"PERSONA_USER_TOKEN_KEYS: key {kid!r} is shorter than {MIN_KEY_CHARS} characters"
                )
        self.ephemeral = not keys and settings.environment == "development"
        if self.ephemeral:
            secret = secrets.token_urlsafe(48)
            keys = {f"dev-{self._kid(secret)}": secret}
        self._keys = keys
        self._signer = next(iter(keys.items()), None)

    @staticmethod
    def _kid(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()[:12]

    def mint(self, tenant: str, user: str, ttl_s: int) -> tuple[str, int]:
        if self._signer is None:
            raise PersonaError(
                "end-user tokens are not configured: set PERSONA_USER_TOKEN_KEYS",
                code="user_tokens_not_configured",
                status_code=503,
                error_type="service_unavailable",
            )
        kid, secret = self._signer
        now = int(time.time())
        expires_at = now + ttl_s
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "ten": tenant, "iat": now, "exp": expires_at}
        return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": kid}), expires_at

    def verify(self, token: str) -> UserClaims:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            secret = self._keys.get(kid) if isinstance(kid, str) else None
            if secret is None:
                raise AuthenticationFailed(
                    "the user token was not signed by a known key", code="invalid_user_token"
                )
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("the user token has expired", code="expired_user_token") from None
        except jwt.PyJWTError:
            raise AuthenticationFailed("invalid user token", code="invalid_user_token") from None
        tenant, user = claims.get("ten"), claims.get("sub")
        if not isinstance(tenant, str) or not isinstance(user, str):
            raise AuthenticationFailed("invalid user token", code="invalid_user_token")
        return UserClaims(tenant, user, int(claims["exp"]))
