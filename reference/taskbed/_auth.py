"""Signed client tokens: who a WebSocket connection belongs to, for how long, and only once.

A token is ``<payload>.<signature>``, both URL-safe base64 without padding. The payload is the
JSON object ``{"u": user_id, "o": organization_id, "exp": expiry, "n": nonce}``; the signature is
HMAC-SHA256 of the payload text under the server's secret. A server accepts a token when its
signature matches, it has not expired on the server's clock, and its nonce was not seen
before: a token opens one connection, so a copied or replayed token is refused (WS-2). The
seen nonces are kept until their token expires, so the memory they take is bounded by the
rate of issued tokens times their lifetime.

Prior art: the shape of a JWT (payload and signature, compared with ``hmac.compare_digest``),
without its algorithm negotiation: there is one algorithm, so there is nothing to downgrade.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

from ._errors import TokenRefusedError, see
from ._model import Owner
from ._ports import Clock, WallClock

#: How long a token issued without an explicit lifetime stays valid, in seconds. A token is
#: used once, when the socket opens, so it need not live long.
DEFAULT_TTL = 60.0
#: Longer tokens are refused before any decoding (a token is ~150 characters).
MAX_TOKEN_LENGTH = 2048


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and checks the per-user tokens of a WebSocket channel.

    Args:
        secret: the HMAC key; a fresh random one by default (tokens then die with the server).
        clock: where expiry is read from (the server's Clock port).
        ttl: the default lifetime of an issued token, in seconds.
    """

    def __init__(
        self, secret: bytes | None = None, *, clock: Clock | None = None, ttl: float = DEFAULT_TTL
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        if len(self._secret) < 16:
            raise ValueError("a token secret needs at least 16 bytes, e.g. secrets.token_bytes(32)")
        self.clock: Clock = clock if clock is not None else WallClock()
        self.ttl = ttl
        self._seen: dict[str, float] = {}  # nonce -> expiry of its token

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, user_id: Any, organization_id: Any = None, *, ttl: float | None = None) -> str:
        """A token for one connection of *user_id* in *organization_id*.

        Raises:
            ValueError: *user_id* is None (a connection always has a user).
            TypeError: an id that JSON cannot carry.
        """
        if user_id is None:
            raise ValueError("a token needs a user id, e.g. signer.issue(7, 10)")
        expiry = self.clock.now() + (self.ttl if ttl is None else ttl)
        body = {"u": user_id, "o": organization_id, "exp": expiry, "n": secrets.token_urlsafe(12)}
        payload = _b64(json.dumps(body, separators=(",", ":"), allow_nan=False).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: object) -> Owner:
        """The owner a token was issued for, and mark it used.

        Raises:
            TokenRefusedError: malformed, wrongly signed, expired, or already used; the
                message says which (and nothing about the secret).
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise _refused("missing or malformed")
        payload, dot, signature = token.partition(".")
        if not dot or not payload or not signature:
            raise _refused("malformed (expected <payload>.<signature>)")
        if not hmac.compare_digest(self._sign(payload), signature):
            raise _refused("its signature does not match (issued by another server?)")
        try:
            body = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):  # pragma: no cover - we signed it ourselves
            raise _refused("malformed payload") from None
        now = self.clock.now()
        if not isinstance(body, dict) or not isinstance(body.get("exp"), int | float):
            raise _refused("malformed payload")  # pragma: no cover - we signed it ourselves
        if body["exp"] <= now:
            raise _refused("expired; ask for a new one")
        self._forget_expired(now)
        nonce = str(body.get("n"))
        if nonce in self._seen:
            raise _refused("already used (a token opens one connection; ask for a new one)")
        self._seen[nonce] = float(body["exp"])
        return Owner(body.get("u"), body.get("o"))

    def _forget_expired(self, now: float) -> None:
        if len(self._seen) > 1024:
            self._seen = {n: exp for n, exp in self._seen.items() if exp > now}


def _refused(why: str) -> TokenRefusedError:
    return TokenRefusedError(
        f"token refused: {why}. Connect with ws://HOST:PORT/ws?token=TOKEN where TOKEN comes "
        f"from channel.issue_token(user_id, organization_id) {see('transport', 'WS-2')}"
    )
