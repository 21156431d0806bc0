"""What the client writes and reads on the wire, as text: encoding a message, decoding a frame,
the client's request ids and the reply types that answer them, and a token's expiry. Sans-IO.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any, Final

from ._types import Message

__all__ = [
    "JOIN_REPLIES",
    "PUBLISH_REPLIES",
    "REFRESH_REPLIES",
    "SUBSCRIBE_REPLIES",
    "UNSUBSCRIBE_REPLIES",
    "decode",
    "encode",
    "request_id",
    "token_exp",
]

# The types of the server's replies to each kind of request this client makes. A message
# answers a request only when its `id` is pending AND its type is one of these: a room message
# that carries an application field named `id` is an ordinary message.
JOIN_REPLIES: Final = frozenset({"room_joined", "room_left", "error"})  # join and leave
SUBSCRIBE_REPLIES: Final = frozenset({"subscribed", "error"})
UNSUBSCRIBE_REPLIES: Final = frozenset({"unsubscribed", "error"})
REFRESH_REPLIES: Final = frozenset({"refreshed", "error"})
PUBLISH_REPLIES: Final = frozenset({"ack", "error"})


def request_id(number: int) -> str:
    """The `id` of this client's request number `number` (1, 2...)."""
    return f"trio_rt.client:{number}"


def encode(message: Mapping[str, Any]) -> str:
    """A message as compact JSON text; TypeError / ValueError for what is not a message (not a
    mapping, no string `type`, not JSON-serializable, NaN...)."""
    if not isinstance(message, Mapping):
        raise TypeError(f"a message must be a mapping (a dict), not {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise ValueError("a message needs a string 'type'")
    return json.dumps(dict(message), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode(raw: str | bytes) -> Message | None:
    """A frame's message, or None when it is not a JSON object with a string `type`."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    return value


def token_exp(token: str | None) -> float | None:
    """The `exp` claim of a JWT, read without verifying anything (the server verifies); None
    when the token is not a JWT or has no numeric `exp`."""
    if token is None:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)
