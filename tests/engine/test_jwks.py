"""JWKSKeySource: keys by `kid` from a JWKS document, sans-IO loading, and a live rotation with
the JWKS served over HTTP by another trio_rt server."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trio_rt import HttpResponse, WebSocketManager
from trio_rt._engine.auth import AuthError, JWKSKeySource, JWTAuthenticator, TokenVerifier

from ..conftest import client

RSA_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(private, rsa.RSAPrivateKey)
        else (jwt.algorithms.ECAlgorithm)
    )
    data: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))
    data.update(kid=kid, **extra)
    return data


def rs_token(private: Any, kid: str | None, sub: str = "ann", alg: str = "RS256") -> str:
    now = time.time()
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode({"sub": sub, "exp": now + 60, "iat": now}, private, alg, headers=headers)


async def never(url: str) -> bytes:
    raise AssertionError("no fetch expected")


def test_keys_by_kid_and_what_is_ignored() -> None:
    source = JWKSKeySource("https://id.example/jwks", fetch=never)
    taken = source.load(
        {
            "keys": [
                jwk(RSA_A, "a"),
                jwk(RSA_B, "b", use="sig", alg="RS256"),
                {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "h"},
                jwk(RSA_B, "enc", use="enc"),
                {**jwk(RSA_A, "priv"), "d": "AQAB"},
                jwk(EC_KEY, "e"),
                "junk",
            ]
        }
    )
    assert taken == 3 and source.kids == {"a", "b", "e"}
    v = TokenVerifier(source, ("RS256",))
    assert v.verify(rs_token(RSA_A, "a")).user_id == "ann"
    assert v.verify(rs_token(RSA_B, "b")).user_id == "ann"
    for token in (rs_token(RSA_A, "b"), rs_token(RSA_B, "a")):  # right kid, wrong key
        with pytest.raises(AuthError, match="bad signature"):
            v.verify(token)
    for kid in ("h", "enc", "priv", "zzz", None):  # ignored keys and unknown kids
        with pytest.raises(AuthError, match="unknown key"):
            v.verify(rs_token(RSA_A, kid))
    ev = TokenVerifier(source, ("ES256",))  # the EC key, selected by kid and curve
    assert ev.verify(rs_token(EC_KEY, "e", alg="ES256")).user_id == "ann"
    with pytest.raises(ValueError, match="JWKS"):
        TokenVerifier(source, ("HS256",))
    with pytest.raises(ValueError):
        source.load({"nokeys": []})


async def test_fetch_limits_and_failures_keep_keys() -> None:
    now = [0.0]
    documents = [{"keys": [jwk(RSA_A, "a")]}]

    async def fetch(url: str) -> bytes:
        if not documents:
            raise OSError("provider down")
        return json.dumps(documents.pop(0)).encode()

    source = JWKSKeySource(
        "https://id.example/jwks", fetch=fetch, clock=lambda: now[0], min_refresh_interval=30
    )
    await source.ensure("a")
    assert source.fetches == 1 and source.kids == {"a"}
    await source.ensure("a")
    await source.ensure("bogus")  # unknown kid, but within min_refresh_interval
    assert source.fetches == 1
    now[0] = 31.0
    await source.ensure("bogus")  # refetch allowed: fails, keys kept
    assert source.fetches == 2 and source.kids == {"a"}
    await source.ensure("a")  # known and fresh enough: no fetch
    assert source.fetches == 2


async def test_rotation_against_a_live_jwks_endpoint() -> None:
    jwks_server = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
    served = {"keys": [jwk(RSA_A, "a")]}

    @jwks_server.route("/jwks")
    def jwks(request: Any) -> HttpResponse:
        return HttpResponse.json(200, served)

    async with jwks_server:
        url = f"http://127.0.0.1:{jwks_server.port}/jwks"
        source = JWKSKeySource(url, min_refresh_interval=0.001)
        auth = JWTAuthenticator(TokenVerifier(source, ("RS256",)))
        manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None, auth=auth)
        async with manager:
            headers = {"Authorization": f"Bearer {rs_token(RSA_A, 'a', sub='ann')}"}
            async with client(manager, additional_headers=headers) as c:
                assert c.welcome is not None and c.welcome["user_id"] == "ann"
            served["keys"] = [jwk(RSA_B, "b")]  # the provider rotates its key
            headers = {"Authorization": f"Bearer {rs_token(RSA_B, 'b', sub='bob')}"}
            async with client(manager, additional_headers=headers) as c:
                assert c.welcome is not None and c.welcome["user_id"] == "bob"
            assert source.fetches == 2 and source.kids == {"b"}
