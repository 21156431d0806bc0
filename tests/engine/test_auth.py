"""JWT at the handshake: the sans-IO verifier and extractor, then a real server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from trio_rt import Connection, WebSocketManager
from trio_rt._engine.auth import AuthError, Claims, JWTAuthenticator, TokenVerifier, extract_token
from trio_rt._engine.connection import Request, _Headers

from ..conftest import client

SECRET = "s3cret-" + "x" * 40
NOW = 1_700_000_000.0


def clock() -> float:
    return NOW


def hs_token(claims: dict[str, Any] | None = None, key: str = SECRET, **header: Any) -> str:
    payload: dict[str, Any] = {"sub": "ann", "exp": NOW + 60, "iat": NOW}
    payload.update(claims or {})
    return jwt.encode(payload, key, algorithm="HS256", headers=header or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built without pyjwt (which refuses to build the dangerous ones)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private: Any) -> bytes:
    pem: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def verifier(**kwargs: Any) -> TokenVerifier:
    kwargs.setdefault("clock", clock)
    return TokenVerifier(SECRET, **kwargs)


def reason(v: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthError) as info:
        v.verify(token)
    return info.value.reason


# -- TokenVerifier --------------------------------------------------------------------------------
def test_hs256_ok() -> None:
    claims = verifier().verify(hs_token({"room": "lobby"}))
    expected = {"sub": "ann", "exp": NOW + 60, "iat": NOW, "room": "lobby"}
    assert claims == Claims("ann", expected, NOW + 60)
    assert SECRET not in repr(verifier())


def test_bytes_secret_and_other_user_claim() -> None:
    long_secret = SECRET * 2
    v = TokenVerifier(long_secret.encode(), ("HS512",), user_claim="uid", clock=clock)
    token = jwt.encode({"uid": "bob", "sub": "x", "exp": NOW + 5}, long_secret, algorithm="HS512")
    assert v.verify(token).user_id == "bob"
    with pytest.raises(ValueError, match="at least 64 bytes"):
        TokenVerifier(SECRET, ("HS256", "HS512"))


def test_expiry_with_and_without_leeway() -> None:
    token = hs_token({"exp": NOW - 10})
    assert reason(verifier(leeway=0), token) == "token expired"
    assert verifier(leeway=30).verify(token).expires_at == NOW - 10
    assert reason(verifier(leeway=30), hs_token({"exp": NOW - 31})) == "token expired"
    assert reason(verifier(leeway=0), hs_token({"exp": NOW})) == "token expired"  # exp exclusive


def test_nbf_and_iat_in_the_future() -> None:
    for claim in ("nbf", "iat"):
        token = hs_token({claim: NOW + 10})
        assert reason(verifier(leeway=0), token) == "token not yet valid"
        assert verifier(leeway=30).verify(token).user_id == "ann"
        assert reason(verifier(leeway=30), hs_token({claim: NOW + 31})) == "token not yet valid"


def test_real_clock_by_default() -> None:
    import time

    v = TokenVerifier(SECRET)
    assert v.verify(hs_token({"exp": time.time() + 60, "iat": time.time()})).user_id == "ann"
    assert reason(v, hs_token({"exp": time.time() - 60})) == "token expired"


def test_time_claims_must_be_numbers() -> None:
    assert reason(verifier(), hs_token({"exp": "tomorrow"})) == "invalid claim 'exp'"
    assert reason(verifier(), hs_token({"nbf": True})) == "invalid claim 'nbf'"


def test_required_claims() -> None:
    token = jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")
    assert reason(verifier(), token) == "missing claim 'exp'"
    token = jwt.encode({"exp": NOW + 60}, SECRET, algorithm="HS256")
    assert reason(verifier(), token) == "missing claim 'sub'"
    anonymous = verifier(required_claims=("exp",)).verify(token)
    assert anonymous.user_id is None
    assert reason(verifier(), hs_token({"sub": 42})) == "invalid claim 'sub'"
    assert reason(verifier(), hs_token({"sub": ""})) == "invalid claim 'sub'"


def test_audience_and_issuer() -> None:
    v = verifier(audience="chat", issuer="https://id.example")
    good = hs_token({"aud": "chat", "iss": "https://id.example"})
    assert v.verify(good).user_id == "ann"
    assert v.verify(hs_token({"aud": ["other", "chat"], "iss": "https://id.example"}))
    assert reason(v, hs_token({"aud": "other", "iss": "https://id.example"})) == "wrong audience"
    assert reason(v, hs_token({"aud": "chat", "iss": "https://evil.example"})) == "wrong issuer"
    assert reason(v, hs_token({"iss": "https://id.example"})) == "missing claim 'aud'"
    assert reason(v, hs_token({"aud": "chat"})) == "missing claim 'iss'"
    # A token meant for some audience is not accepted by a verifier that names none (RFC 7519).
    assert reason(verifier(), hs_token({"aud": "chat"})) == "wrong audience"
    assert verifier(audience=["a", "chat"]).verify(hs_token({"aud": "chat"}))


def test_none_algorithm_token_is_refused() -> None:
    unsigned = handmade({"alg": "none", "typ": "JWT"}, {"sub": "ann", "exp": NOW + 60}, None)
    assert reason(verifier(), unsigned) == "algorithm not allowed"
    for alg in ("None", "NONE"):
        token = handmade({"alg": alg}, {"sub": "ann", "exp": NOW + 60}, None)
        assert reason(verifier(), token) == "algorithm not allowed"


def test_header_alg_is_checked_before_verifying() -> None:
    # Correctly signed, but with an algorithm the verifier was not configured for.
    token = jwt.encode({"sub": "ann", "exp": NOW + 60}, SECRET * 2, algorithm="HS512")
    assert reason(verifier(), token) == "algorithm not allowed"
    assert reason(verifier(), handmade({"typ": "JWT"}, {"sub": "ann"}, b"k")) == (
        "algorithm not allowed"
    )
    assert reason(verifier(), handmade({"alg": ["HS256"]}, {}, b"k")) == "algorithm not allowed"


def test_hs_rs_confusion_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = public_pem(rsa_key)
    v = TokenVerifier(pem, ("RS256",), clock=clock)
    # The attack: sign HS256 with the (public) RSA key as the HMAC secret.
    forged = handmade({"alg": "HS256", "typ": "JWT"}, {"sub": "mallory", "exp": NOW + 60}, pem)
    assert reason(v, forged) == "algorithm not allowed"
    # And the configuration that would make it work cannot be built.
    with pytest.raises(ValueError, match="algorithm confusion"):
        TokenVerifier(pem, ("HS256",))
    with pytest.raises(ValueError, match="one family"):
        TokenVerifier(pem, ("RS256", "HS256"))


def test_rs256_ok(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode({"sub": "ann", "exp": NOW + 60}, rsa_key, algorithm="RS256")
    for key in (public_pem(rsa_key), public_pem(rsa_key).decode(), rsa_key.public_key()):
        assert TokenVerifier(key, ("RS256", "PS256"), clock=clock).verify(token).user_id == "ann"
    ps = jwt.encode({"sub": "bob", "exp": NOW + 60}, rsa_key, algorithm="PS256")
    assert TokenVerifier(rsa_key.public_key(), ("PS256",), clock=clock).verify(ps).user_id == "bob"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    v = TokenVerifier(other.public_key(), ("RS256",), clock=clock)
    assert reason(v, token) == "bad signature"


def test_es256_and_eddsa_ok() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"sub": "ann", "exp": NOW + 60}, key, algorithm="ES256")
    v = TokenVerifier(public_pem(key), ("ES256",), clock=clock)
    assert v.verify(token).user_id == "ann"
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode({"sub": "ann", "exp": NOW + 60}, other, algorithm="ES256")
    assert reason(v, forged) == "bad signature"
    with pytest.raises(ValueError, match="ES384 needs a key on secp384r1"):
        TokenVerifier(key.public_key(), ("ES384",))
    ed = ed25519.Ed25519PrivateKey.generate()
    token = jwt.encode({"sub": "ed", "exp": NOW + 60}, ed, algorithm="EdDSA")
    assert TokenVerifier(ed.public_key(), ("EdDSA",), clock=clock).verify(token).user_id == "ed"


def test_tampered_token() -> None:
    token = hs_token()
    head, payload, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert reason(verifier(), f"{head}.{payload}.{flipped}") == "bad signature"
    evil = b64(json.dumps({"sub": "root", "exp": NOW + 60}).encode())
    assert reason(verifier(), f"{head}.{evil}.{sig}") == "bad signature"
    assert reason(verifier(), hs_token(key="another-secret-" + "y" * 40)) == "bad signature"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "...",
        "a.b.c.d",
        "%%%.e30.sig",
        "eyJhbGciOiJIUzI1NiJ9.%%%.x",  # good header, payload not base64
        "eyJhbGciOiJIUzI1NiJ9.e30.!!",  # good header and payload, signature not base64
    ],
)
def test_malformed(token: str) -> None:
    assert reason(verifier(), token) == "malformed token"


def test_malformed_payload_and_crit() -> None:
    assert reason(verifier(), handmade({"alg": "HS256"}, [1, 2], SECRET.encode())) == (  # type: ignore[arg-type]
        "malformed token"
    )
    crit = handmade({"alg": "HS256", "crit": ["exp"]}, {"sub": "a"}, SECRET.encode())
    assert reason(verifier(), crit) == "malformed token"
    assert reason(verifier(), 42) == "malformed token"  # type: ignore[arg-type]


def test_too_long() -> None:
    long = hs_token({"pad": "x" * 9000})
    assert reason(verifier(), long) == "token too long"
    assert verifier(max_token_length=20_000).verify(long).user_id == "ann"


def test_reasons_do_not_leak() -> None:
    token = hs_token({"exp": NOW - 100})
    r = reason(verifier(leeway=0), token)
    assert token not in r and SECRET not in r


@pytest.mark.parametrize(
    ("key", "algorithms", "match"),
    [
        (SECRET, (), "must not be empty"),
        (SECRET, ("none",), "'none'"),
        (SECRET, ("HS256", "None"), "'none'"),
        (SECRET, ("HS257",), "unsupported"),
        ("short", ("HS256",), "at least 32 bytes"),
        (SECRET, ("HS256", "RS256"), "one family"),
        (SECRET, ("RS256", "ES256"), "one family"),
        (b"-----BEGIN PUBLIC KEY-----" + b"A" * 64, ("HS256",), "confusion"),
        ("ssh-rsa AAAAB3NzaC1yc2E" + "A" * 40, ("HS256",), "confusion"),
        ("not a pem", ("RS256",), "PEM public key"),
    ],
)
def test_config_errors(key: Any, algorithms: tuple[str, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TokenVerifier(key, algorithms)


def test_config_errors_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(TypeError):
        TokenVerifier(rsa_key.public_key(), ("HS256",))
    with pytest.raises(TypeError, match="RSA public key"):
        TokenVerifier(ec.generate_private_key(ec.SECP256R1()).public_key(), ("RS256",))
    with pytest.raises(ValueError, match="public key"):
        TokenVerifier(rsa_key, ("RS256",))  # type: ignore[arg-type]
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="public key"):
        TokenVerifier(private_pem, ("RS256",))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="2048"):
        TokenVerifier(small.public_key(), ("RS256",))
    with pytest.raises(ValueError, match="leeway"):
        TokenVerifier(SECRET, leeway=-1)
    with pytest.raises(ValueError, match="audience"):
        TokenVerifier(SECRET, audience=[])


# -- extract_token --------------------------------------------------------------------------------
def request(
    headers: list[tuple[str, str]] | None = None, query: dict[str, list[str]] | None = None
) -> Request:
    h = Headers(headers or [])
    subprotocols = tuple(
        p.strip() for v in h.get_all("Sec-WebSocket-Protocol") for p in v.split(",") if p.strip()
    )
    return Request("/", query or {}, _Headers(h), None, subprotocols)


def test_extract_from_header() -> None:
    assert extract_token(request([("Authorization", "Bearer abc.def.ghi")])) == "abc.def.ghi"
    assert extract_token(request([("authorization", "bearer  abc.def-_ghi ")])) == "abc.def-_ghi"
    assert extract_token(request()) is None
    assert extract_token(request([("Authorization", "Bearer x")]), header=False) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", "unsupported authorization scheme"),
        ("Bearer", "malformed authorization header"),
        ("Bearer   ", "malformed authorization header"),
        ("Bearer a b", "malformed authorization header"),
        ('Bearer a"b', "malformed authorization header"),
        ("", "unsupported authorization scheme"),
    ],
)
def test_extract_malformed_header(value: str, why: str) -> None:
    with pytest.raises(AuthError, match=why):
        extract_token(request([("Authorization", value)]))


def test_extract_two_authorization_headers() -> None:
    req = request([("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    with pytest.raises(AuthError, match="malformed"):
        extract_token(req)


def test_extract_from_subprotocol() -> None:
    req = request([("Sec-WebSocket-Protocol", "chat.v1, bearer.abc.def.ghi")])
    assert extract_token(req) == "abc.def.ghi"
    assert extract_token(req, subprotocol_prefix=None) is None
    assert extract_token(req, subprotocol_prefix="token.") is None
    with pytest.raises(AuthError, match="more than one"):
        extract_token(request([("Sec-WebSocket-Protocol", "bearer.a, bearer.b")]))
    with pytest.raises(AuthError, match="malformed"):
        extract_token(request([("Sec-WebSocket-Protocol", "bearer.")]))


def test_extract_from_query_only_when_enabled() -> None:
    req = request(query={"access_token": ["abc"]})
    assert extract_token(req) is None
    assert extract_token(req, query_param="access_token") == "abc"
    with pytest.raises(AuthError, match="more than one"):
        extract_token(request(query={"t": ["a", "b"]}), query_param="t")
    with pytest.raises(AuthError, match="malformed"):
        extract_token(request(query={"t": [""]}), query_param="t")


def test_extract_refuses_two_sources() -> None:
    req = request([("Authorization", "Bearer a"), ("Sec-WebSocket-Protocol", "bearer.b")])
    with pytest.raises(AuthError, match="more than one"):
        extract_token(req)
    assert extract_token(req, header=False) == "b"


def test_authenticator_config() -> None:
    v = TokenVerifier(SECRET)
    with pytest.raises(ValueError, match="at least one"):
        JWTAuthenticator(v, header=False, subprotocol_prefix=None)
    with pytest.raises(ValueError, match="subprotocol_prefix"):
        JWTAuthenticator(v, subprotocol_prefix="bad prefix")
    with pytest.raises(TypeError):
        JWTAuthenticator(SECRET)  # type: ignore[arg-type]


# -- with a real server ---------------------------------------------------------------------------
def auth_manager(
    make_manager: Callable[..., WebSocketManager], **kwargs: Any
) -> tuple[WebSocketManager, list[Connection]]:
    manager = make_manager()
    manager.on_connection(JWTAuthenticator(TokenVerifier(SECRET, leeway=0), **kwargs))
    seen: list[Connection] = []

    @manager.on_connection
    async def remember(conn: Connection) -> None:
        seen.append(conn)

    return manager, seen


def live_token(**claims: Any) -> str:
    import time

    payload = {"sub": "ann", "exp": time.time() + 60}
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


async def refused(manager: WebSocketManager, path: str = "/", **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with connect(manager.url.rstrip("/") + path, open_timeout=5, **kwargs):
            pass  # pragma: no cover
    return info.value


async def test_no_token_is_401(make_manager: Callable[..., WebSocketManager]) -> None:
    manager, seen = auth_manager(make_manager)
    async with manager:
        err = await refused(manager)
        assert err.response.status_code == 401
        assert json.loads(err.response.body) == {"error": "missing token"}
        assert err.response.headers["WWW-Authenticate"] == "Bearer"
        assert manager.stats.handshakes_rejected["http_401"] == 1
        assert not manager.connections and not seen


async def test_bad_token_is_401(make_manager: Callable[..., WebSocketManager]) -> None:
    manager, seen = auth_manager(make_manager)
    async with manager:
        expired = live_token(exp=1)
        err = await refused(manager, additional_headers={"Authorization": f"Bearer {expired}"})
        assert err.response.status_code == 401
        assert json.loads(err.response.body) == {"error": "token expired"}
        assert err.response.headers["WWW-Authenticate"] == (
            'Bearer error="invalid_token", error_description="token expired"'
        )
        forged = live_token() + "x"
        err = await refused(manager, additional_headers={"Authorization": f"Bearer {forged}"})
        assert json.loads(err.response.body) == {"error": "bad signature"}
        err = await refused(manager, additional_headers={"Authorization": "Basic dTpw"})
        assert err.response.status_code == 401
        assert json.loads(err.response.body) == {"error": "unsupported authorization scheme"}
        assert not manager.connections and not seen


async def test_good_token_in_header(make_manager: Callable[..., WebSocketManager]) -> None:
    manager, seen = auth_manager(make_manager)
    async with manager:
        headers = {"Authorization": f"Bearer {live_token(sub='ann', role='mod')}"}
        async with client(manager, additional_headers=headers) as c:
            assert c.welcome is not None and c.welcome["user_id"] == "ann"
            (conn,) = seen
            assert conn.user_id == "ann"
            claims = conn.state["claims"]
            assert isinstance(claims, Claims) and claims.claims["role"] == "mod"
            assert (await c.request({"type": "ping"}))["type"] == "pong"


async def test_good_token_in_subprotocol(make_manager: Callable[..., WebSocketManager]) -> None:
    manager, _ = auth_manager(make_manager)
    async with manager:
        token = live_token(sub="bob")
        async with client(manager, subprotocols=[f"bearer.{token}"]) as c:
            assert c.welcome is not None and c.welcome["user_id"] == "bob"
            assert c.ws.subprotocol is None  # trio_rt selects no subprotocol (docs/security.md)
        err = await refused(manager, subprotocols=["bearer.nope"])
        assert json.loads(err.response.body) == {"error": "malformed token"}


async def test_query_param_only_when_enabled(
    make_manager: Callable[..., WebSocketManager],
) -> None:
    token = live_token(sub="cid")
    manager, _ = auth_manager(make_manager)
    async with manager:
        err = await refused(manager, f"/?access_token={token}")
        assert json.loads(err.response.body) == {"error": "missing token"}
    manager, _ = auth_manager(make_manager, query_param="access_token")
    async with manager, client(manager, f"/?access_token={token}") as c:
        assert c.welcome is not None and c.welcome["user_id"] == "cid"


async def test_optional(make_manager: Callable[..., WebSocketManager]) -> None:
    manager, seen = auth_manager(make_manager, optional=True)
    async with manager:
        async with client(manager) as c:
            assert c.welcome is not None and c.welcome["user_id"] is None
            assert "claims" not in seen[0].state
        headers = {"Authorization": f"Bearer {live_token(sub='dee')}"}
        async with client(manager, additional_headers=headers) as c:
            assert c.welcome is not None and c.welcome["user_id"] == "dee"
        err = await refused(manager, additional_headers={"Authorization": "Bearer bad.to.ken"})
        assert err.response.status_code == 401
        assert json.loads(err.response.body) == {"error": "malformed token"}
