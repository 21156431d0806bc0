"""JWT authentication at the WebSocket handshake (needs the `auth` extra: pyjwt[crypto]).

Three layers, the first two sans-IO:

- `TokenVerifier`: checks one token string against a fixed configuration (key, algorithms,
  audience, issuer, leeway, required claims) and returns `Claims` or raises `AuthError`.
- `extract_token`: finds the token in a handshake `Request` (Authorization header,
  Sec-WebSocket-Protocol entry, query parameter; each enabled separately).
- `JWTAuthenticator`: a connection handler (`manager.on_connection(JWTAuthenticator(...))`)
  combining the two; a bad or missing token is answered with HTTP 401 and no upgrade.

See docs/security.md for the threat model and what is not covered yet.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .._core.checks import int_problem, number_problem, require, require_positive_numbers
from .._core.errors import TrioRTError
from .http import Reject

if TYPE_CHECKING:
    from .connection import Connection, Request

__all__ = [
    "AuthError",
    "Claims",
    "JWKSKeySource",
    "JWTAuthenticator",
    "TokenVerifier",
    "extract_token",
]

log = logging.getLogger("trio_rt.auth")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512"})
EDDSA_ALGORITHMS = frozenset({"EdDSA"})
_FAMILIES: dict[str, frozenset[str]] = {
    "HMAC": HMAC_ALGORITHMS,
    "RSA": RSA_ALGORITHMS,
    "EC": EC_ALGORITHMS,
    "EdDSA": EDDSA_ALGORITHMS,
}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
MIN_HMAC_SECRET_BYTES = 32
MIN_RSA_KEY_BITS = 2048
DEFAULT_MAX_TOKEN_LENGTH = 8192

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

# RFC 6750 b64token (token68): what may follow "Bearer ".
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class AuthError(TrioRTError):
    """A token was missing, malformed or invalid. `reason` is safe to show to the client:
    it never contains the token or the key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified token: the user id (the `user_claim`, usually `sub`), every claim, and the
    expiry as a Unix timestamp (None when the token has no `exp`)."""

    user_id: str | None
    claims: dict[str, Any]
    expires_at: float | None


class TokenVerifier:
    """Verifies JWTs against one key and a fixed set of algorithms. Sans-IO: no network, no
    key fetching; `verify` is a plain function of the token and the clock.

    The configuration is validated at construction (a `ValueError`/`TypeError` naming the
    problem): `algorithms` non-empty, never `none`, all of one family (HMAC, RSA, EC or EdDSA;
    mixing HMAC with a public-key family is the classic algorithm-confusion hole), and a key
    that fits the family: an HMAC secret at least as long as the hash (32 bytes for HS256, 48 for
    HS384, 64 for HS512; str or bytes, not a PEM), or a
    public key (a `cryptography` public key object or PEM text) of the right type; RSA keys
    of at least 2048 bits, EC keys on the curve of the algorithm.
    """

    def __init__(
        self,
        key: str | bytes | PublicKey | JWKSKeySource,
        algorithms: Iterable[str] = ("HS256",),
        *,
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float = 30.0,
        required_claims: Iterable[str] = ("exp", "sub"),
        user_claim: str = "sub",
        clock: Callable[[], float] | None = None,
        max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH,
    ) -> None:
        if isinstance(algorithms, str):
            algorithms = (algorithms,)
        algs = tuple(dict.fromkeys(algorithms))
        if not algs:
            raise ValueError("algorithms must not be empty")
        for alg in algs:
            if not isinstance(alg, str):
                raise TypeError(f"algorithm names are strings, not {type(alg).__name__}")
            if alg.lower() == "none":
                raise ValueError("the 'none' algorithm is never allowed")
        unknown = [a for a in algs if not any(a in f for f in _FAMILIES.values())]
        if unknown:
            raise ValueError(f"unsupported algorithms: {', '.join(unknown)}")
        families = {name for name, members in _FAMILIES.items() if members & set(algs)}
        if len(families) > 1:
            raise ValueError(
                "algorithms must all be of one family (HMAC, RSA, EC or EdDSA), got "
                f"{', '.join(sorted(families))}: mixing HMAC with public-key algorithms allows "
                "algorithm confusion"
            )
        (family,) = families
        self.key_source: JWKSKeySource | None = None
        self._key: bytes | PublicKey | None = None
        if isinstance(key, JWKSKeySource):
            if family == "HMAC":
                raise ValueError("a JWKS carries public keys: use RSA, EC or EdDSA algorithms")
            self.key_source = key
        else:
            self._key = _prepare_key(key, family, algs)
        self.algorithms: tuple[str, ...] = algs
        self.family: str = family

        require(number_problem("leeway", leeway, at_least=0))  # seconds
        self.leeway = float(leeway)
        self.audience = _str_or_list(audience, "audience")
        self.issuer = _str_or_list(issuer, "issuer")
        if isinstance(required_claims, str):
            required_claims = (required_claims,)
        self.required_claims: tuple[str, ...] = tuple(dict.fromkeys(required_claims))
        if not all(isinstance(c, str) and c for c in self.required_claims):
            raise ValueError("required_claims must be non-empty strings")
        if not isinstance(user_claim, str) or not user_claim:
            raise ValueError("user_claim must be a non-empty string")
        self.user_claim = user_claim
        require(int_problem("max_token_length", max_token_length, at_least=16))
        self.max_token_length = max_token_length
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        # Times are checked here (with the injectable clock), not by pyjwt; signature, aud,
        # iss, presence of required claims and the types of sub/jti are pyjwt's.
        self._jwt = jwt.PyJWT(
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": True,
                "verify_iss": True,
                "require": list(self.required_claims),
                "enforce_minimum_key_length": True,
            }
        )

    def __repr__(self) -> str:  # never shows the key
        return (
            f"<TokenVerifier {'/'.join(self.algorithms)} aud={self.audience!r} "
            f"iss={self.issuer!r} leeway={self.leeway}>"
        )

    def verify(self, token: str) -> Claims:
        """Return the claims of a valid token; raise `AuthError(reason)` otherwise.

        Reasons: "malformed token", "token too long", "algorithm not allowed", "bad signature",
        "token expired", "token not yet valid", "wrong audience", "wrong issuer",
        "missing claim 'x'", "invalid claim 'x'", "invalid token", and with a `JWKSKeySource`
        "unknown key" (no key of the JWKS has the token's `kid` and fits its `alg`).
        """
        if not isinstance(token, str) or not token:
            raise AuthError("malformed token")
        if len(token) > self.max_token_length:
            raise AuthError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed token") from None
        # Checked before anything is verified, and independently of pyjwt's own check.
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError("algorithm not allowed")
        if "crit" in header:  # no JWS extension is understood here (RFC 7515 §4.1.11)
            raise AuthError("malformed token")
        key: bytes | PublicKey | None = self._key
        if self.key_source is not None:
            kid = header.get("kid")
            key = self.key_source.key_for(kid if isinstance(kid, str) else None, alg)
        if key is None:
            raise AuthError("unknown key")
        try:
            payload = self._jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
            )
        except jwt.InvalidSignatureError:
            raise AuthError("bad signature") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("algorithm not allowed") from None
        except jwt.DecodeError:
            raise AuthError("malformed token") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"missing claim {e.claim!r}") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong issuer") from None
        except jwt.exceptions.InvalidSubjectError:
            raise AuthError("invalid claim 'sub'") from None
        except jwt.exceptions.InvalidJTIError:
            raise AuthError("invalid claim 'jti'") from None
        except jwt.InvalidKeyError:  # should not happen: the key was checked at construction
            raise AuthError("bad signature") from None
        except jwt.InvalidTokenError:
            raise AuthError("invalid token") from None

        now = self._clock()
        exp = _numeric_date(payload, "exp")
        nbf = _numeric_date(payload, "nbf")
        iat = _numeric_date(payload, "iat")
        if exp is not None and now >= exp + self.leeway:
            raise AuthError("token expired")
        if nbf is not None and now < nbf - self.leeway:
            raise AuthError("token not yet valid")
        if iat is not None and now < iat - self.leeway:
            raise AuthError("token not yet valid")  # issued in the future

        user_id = payload.get(self.user_claim)
        if user_id is not None and (not isinstance(user_id, str) or not user_id):
            raise AuthError(f"invalid claim {self.user_claim!r}")
        return Claims(user_id=user_id, claims=payload, expires_at=exp)


class JWKSKeySource:
    """The public keys of an identity provider's JWKS URL, for `TokenVerifier(JWKSKeySource(url),
    ("RS256",))`: the key is picked by the token's `kid`.

    Pull-based, no background task: `JWTAuthenticator` calls `ensure(kid)` before verifying,
    which fetches the JWKS when the cache is older than `cache_ttl` or the `kid` is unknown
    (a rotated key), but never more often than every `min_refresh_interval` seconds (tokens
    with made-up `kid`s cannot make the server hammer the provider). A failed fetch keeps the
    keys it had (logged). `load(jwks)` is the sans-IO part.

    Only public signature keys are taken: `kty` RSA (at least 2048 bits), EC or OKP; symmetric
    (`oct`) keys, keys with `use` other than `sig` and keys whose `alg` is not allowed by the
    verifier are ignored. Use an https URL: whoever controls the JWKS controls authentication.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_ttl: float = 300.0,
        min_refresh_interval: float = 30.0,
        timeout: float = 5.0,
        max_bytes: int = 1 << 20,
        fetch: Callable[[str], Awaitable[bytes]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ValueError("the JWKS URL must be an http(s) URL")
        require_positive_numbers(  # seconds
            cache_ttl=cache_ttl, min_refresh_interval=min_refresh_interval, timeout=timeout
        )
        self.url = url
        self.cache_ttl = float(cache_ttl)
        self.min_refresh_interval = float(min_refresh_interval)
        self.timeout = float(timeout)
        self.max_bytes = max_bytes
        self._fetch = fetch if fetch is not None else self._fetch_url
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._keys: dict[str | None, tuple[jwt.PyJWK, ...]] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self.fetches = 0

    @property
    def kids(self) -> frozenset[str | None]:
        return frozenset(self._keys)

    def load(self, jwks: object) -> int:
        """Replace the keys with those of a JWKS document (a dict); returns how many were
        taken. Raises ValueError when it is not a JWKS."""
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError("not a JWKS document (no 'keys' list)")
        keys: dict[str | None, list[jwt.PyJWK]] = {}
        for entry in jwks["keys"]:
            key = _public_jwk(entry)
            if key is not None:
                keys.setdefault(key.key_id, []).append(key)
        self._keys = {kid: tuple(found) for kid, found in keys.items()}
        return sum(len(found) for found in keys.values())

    def key_for(self, kid: str | None, alg: str) -> PublicKey | None:
        """The key for a token's `kid` and `alg`. A token without `kid` is accepted only when
        the JWKS has exactly one usable key for `alg`."""
        candidates = (
            self._keys.get(kid, ())
            if kid is not None
            else tuple(k for found in self._keys.values() for k in found)
        )
        fitting = [k for k in candidates if _jwk_fits(k, alg)]
        if len(fitting) != 1:
            return None
        return fitting[0].key  # type: ignore[no-any-return]

    async def ensure(self, kid: str | None) -> None:
        """Fetch the JWKS if it is stale, or if `kid` is unknown, within the refresh limits."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self.cache_ttl
        unknown = kid not in self._keys if kid is not None else not self._keys
        recent = (
            self._attempted_at is not None and now - self._attempted_at < self.min_refresh_interval
        )
        if (stale or unknown) and not recent:
            await self.refresh()

    async def refresh(self) -> None:
        """Fetch and load the JWKS now; on failure keep the current keys (logged)."""
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            body = await self._fetch(self.url)
            if len(body) > self.max_bytes:
                raise ValueError(f"JWKS larger than {self.max_bytes} bytes")
            n = self.load(json.loads(body))
        except Exception as exc:
            log.warning("could not refresh the JWKS from %s: %r", self.url, exc)
            return
        self._fetched_at = self._clock()
        log.info("loaded %d keys from the JWKS at %s", n, self.url)

    async def _fetch_url(self, url: str) -> bytes:
        import trio

        def get() -> bytes:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                data: bytes = response.read(self.max_bytes + 1)
                return data

        with trio.fail_after(self.timeout * 2):
            return await trio.to_thread.run_sync(get, abandon_on_cancel=True)


_JWK_FAMILIES = {"RSA": RSA_ALGORITHMS, "EC": EC_ALGORITHMS, "OKP": EDDSA_ALGORITHMS}


def _public_jwk(entry: object) -> jwt.PyJWK | None:
    if not isinstance(entry, dict) or entry.get("kty") not in _JWK_FAMILIES:
        return None  # "oct" (a shared secret) is never taken from a JWKS
    if entry.get("use", "sig") != "sig" or any(p in entry for p in ("d", "p", "q")):
        return None  # encryption keys; private keys have no business in a JWKS
    try:
        key = jwt.PyJWK(entry)
    except Exception:  # unsupported curve, malformed numbers...
        return None
    if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_KEY_BITS:
        return None
    return key


def _jwk_fits(key: jwt.PyJWK, alg: str) -> bool:
    if alg not in _JWK_FAMILIES.get(str(key.key_type), frozenset()):
        return False
    # pyjwt: PyJWK has no public API for the JWK's own "alg" member (`algorithm_name` falls
    # back to a default for the key type); read the parsed JWK it keeps.
    declared = key._jwk_data.get("alg")
    if declared is not None and declared != alg:
        return False
    if alg in _EC_CURVES:
        return isinstance(key.key, ec.EllipticCurvePublicKey) and isinstance(
            key.key.curve, _EC_CURVES[alg]
        )
    return True


def _numeric_date(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None and name not in payload:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthError(f"invalid claim {name!r}")
    return float(value)


def _str_or_list(value: str | Iterable[str] | None, what: str) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        if value == "":
            raise ValueError(f"{what} must not be empty")
        return value
    values = list(value)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{what} must be a non-empty string or a non-empty list of them")
    return values


def _prepare_key(key: object, family: str, algs: tuple[str, ...]) -> bytes | PublicKey:
    if family == "HMAC":
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, bytes):
            raise TypeError(f"HMAC algorithms need a str or bytes secret, not {_kind(key)}")
        if _looks_like_public_key(key):
            raise ValueError(
                "an HMAC secret must not be a PEM or SSH key: that is algorithm confusion"
            )
        # RFC 7518 §3.2: at least as long as the hash output (32, 48, 64 bytes).
        need = max(MIN_HMAC_SECRET_BYTES, *(int(a[2:]) // 8 for a in algs))
        if len(key) < need:
            raise ValueError(f"an HMAC secret for {', '.join(algs)} must be at least {need} bytes")
        return key

    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, bytes):
        if b"PRIVATE KEY" in key:
            raise ValueError("pass the public key: verifying never needs the private one")
        try:
            loaded: object = serialization.load_pem_public_key(key)
        except ValueError:
            raise ValueError(f"{family} algorithms need a PEM public key") from None
        except Exception as e:  # unsupported key types (cryptography's UnsupportedAlgorithm)
            raise ValueError(f"{family} algorithms need a PEM public key: {e}") from None
        key = loaded
    if isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise ValueError("pass the public key: verifying never needs the private one")
    if family == "RSA":
        if not isinstance(key, rsa.RSAPublicKey):
            raise TypeError(f"RSA algorithms need an RSA public key, not {_kind(key)}")
        if key.key_size < MIN_RSA_KEY_BITS:
            raise ValueError(f"an RSA key must be at least {MIN_RSA_KEY_BITS} bits")
        return key
    if family == "EC":
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise TypeError(f"EC algorithms need an EC public key, not {_kind(key)}")
        for alg in algs:
            if not isinstance(key.curve, _EC_CURVES[alg]):
                raise ValueError(f"{alg} needs a key on {_EC_CURVES[alg].name}")
        return key
    if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise TypeError(f"EdDSA needs an Ed25519 or Ed448 public key, not {_kind(key)}")
    return key


def _looks_like_public_key(key: bytes) -> bool:
    return b"-----BEGIN" in key or key.strip().startswith((b"ssh-", b"ecdsa-sha2-"))


def _kind(value: object) -> str:
    return type(value).__name__


def extract_token(
    request: Request,
    *,
    header: bool = True,
    subprotocol_prefix: str | None = "bearer.",
    query_param: str | None = None,
) -> str | None:
    """Find the token of a handshake. Sans-IO.

    Sources, each enabled separately: `Authorization: Bearer <token>` (`header`), a
    `Sec-WebSocket-Protocol` entry `<subprotocol_prefix><token>` (browsers cannot set
    headers on a WebSocket), and the query parameter `query_param` (off by default: URLs end
    up in logs). Returns None when no enabled source carries a token. Raises `AuthError` for
    a malformed source (another scheme than Bearer, "Bearer" alone, several tokens).
    """
    found: list[str] = []
    if header:
        value = request.headers.get("authorization")
        if value is not None:
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise AuthError("unsupported authorization scheme")
            credentials = credentials.strip()
            if not credentials:
                raise AuthError("malformed authorization header")
            if not _TOKEN68.fullmatch(credentials):
                # also what several Authorization headers look like once joined with ", "
                raise AuthError("malformed authorization header")
            found.append(credentials)
    if subprotocol_prefix:
        entries = [p for p in request.subprotocols if p.startswith(subprotocol_prefix)]
        if len(entries) > 1:
            raise AuthError("more than one token")
        if entries:
            token = entries[0][len(subprotocol_prefix) :]
            if not token:
                raise AuthError("malformed subprotocol token")
            found.append(token)
    if query_param:
        values = request.query.get(query_param)
        if values:
            if len(values) > 1:
                raise AuthError("more than one token")
            if not values[0]:
                raise AuthError("malformed query token")
            found.append(values[0])
    if len(found) > 1:
        raise AuthError("more than one token")
    return found[0] if found else None


class JWTAuthenticator:
    """A connection handler that authenticates the handshake with a JWT.

    ``manager.on_connection(JWTAuthenticator(TokenVerifier(secret)))``

    On success: ``conn.user_id = claims.user_id`` and ``conn.state["claims"] = claims``.
    On failure: ``Reject(401, reason)`` with a ``WWW-Authenticate`` header (RFC 6750): the
    client gets HTTP 401, ``{"error": reason}`` and no upgrade. With ``optional=True`` a
    handshake without any token is let in anonymously (``user_id`` stays None); a token that
    is present but invalid is still refused.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        header: bool = True,
        subprotocol_prefix: str | None = "bearer.",
        query_param: str | None = None,
        optional: bool = False,
    ) -> None:
        if not isinstance(verifier, TokenVerifier):
            raise TypeError("verifier must be a TokenVerifier")
        if subprotocol_prefix is not None and (
            not subprotocol_prefix or not _TOKEN68.fullmatch(subprotocol_prefix)
        ):
            raise ValueError("subprotocol_prefix must be a non-empty token, e.g. 'bearer.'")
        if query_param is not None and not query_param:
            raise ValueError("query_param must be a non-empty name or None")
        if not (header or subprotocol_prefix or query_param):
            raise ValueError("enable at least one token source")
        self.verifier = verifier
        self.header = header
        self.subprotocol_prefix = subprotocol_prefix
        self.query_param = query_param
        self.optional = optional

    async def verify(self, token: str) -> Claims:
        """`verifier.verify(token)`, after fetching the JWKS if the verifier uses one and the
        token's key is not known yet. Raises AuthError."""
        source = self.verifier.key_source
        if source is not None:
            try:
                kid = jwt.get_unverified_header(token).get("kid")
            except jwt.InvalidTokenError:
                raise AuthError("malformed token") from None
            await source.ensure(kid if isinstance(kid, str) else None)
        return self.verifier.verify(token)

    async def __call__(self, conn: Connection) -> None:
        try:
            token = extract_token(
                conn.request,
                header=self.header,
                subprotocol_prefix=self.subprotocol_prefix,
                query_param=self.query_param,
            )
            if token is None:
                if self.optional:
                    return
                log.debug("handshake from %s refused: missing token", conn.request.remote_address)
                # RFC 6750 §3.1: no error code when the request had no credentials at all.
                raise Reject(401, "missing token", **{"WWW-Authenticate": "Bearer"})
            claims = await self.verify(token)
        except AuthError as e:
            log.debug("handshake from %s refused: %s", conn.request.remote_address, e.reason)
            challenge = f'Bearer error="invalid_token", error_description="{e.reason}"'
            raise Reject(401, e.reason, **{"WWW-Authenticate": challenge}) from None
        conn.user_id = claims.user_id
        conn.state["claims"] = claims
        conn.expires_at = self.deadline(claims)

    def deadline(self, claims: Claims) -> float | None:
        """When a connection authenticated with `claims` stops being valid (Unix time): the
        token's `exp` plus the verifier's leeway, the last moment `verify` accepts it."""
        if claims.expires_at is None:
            return None
        return claims.expires_at + self.verifier.leeway
