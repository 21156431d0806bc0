"""A reconnecting Python client for trio_rt servers, on websockets' native Trio implementation.

::

    async with WebSocketClient("ws://127.0.0.1:3001/") as client:
        await client.join_room("chat:general")
        await client.send({"type": "chat_message", "payload": {"room": "chat:general"}})
        async for message in client:
            ...

The client owns its background tasks: they run in a nursery opened by ``async with`` and none of
them outlives the block. See docs/client.md for the full contract; the short version:

* ``send()`` queues the message in a bounded outbox; a writer task writes it while connected.
  Messages sent while disconnected are written, in order, after the next successful connect.
  Delivery is at most once: a message is written once and never resent.
* A reader task reads the socket all the time, whatever the app does, into a bounded receive
  buffer; iterate the client or call ``receive()`` to read it. When the app falls
  ``receive_buffer`` messages behind, the ``receive_overflow`` policy applies (``"reconnect"``:
  keep what was received, drop the connection, reconnect and recover once the app caught up;
  ``"drop_oldest"``; or ``"wait"``: stop reading meanwhile, the heartbeat bounding the wait).
* Liveness does not depend on the app or on websockets' flow control: the client pings every
  ``ping_interval`` seconds and drops the connection when no pong came within ``ping_timeout``;
  every connection's tasks (websockets' included) live in a nursery the client cancels when
  the connection ends, so a dead server always leads to a reconnect and ``aclose()`` is bounded.
* Lost connections are re-established with exponential backoff and jitter; rooms joined with
  ``join_room()`` are joined again on every new connection (with ``since``: missed messages are
  replayed), table subscriptions are renewed from their last position.

The package is laid out in two halves (docs/architecture.md, "The Python client"):

- sans-IO, tested without sockets (tests/client/): `_state.py` (`ClientCore`: rooms, positions,
  subscriptions, requests and reply matching, what to write next), `_positions.py` (stream
  positions and the duplicate rule), `_buffers.py` (the outbox and the receive buffer with
  their overflow policies), `_backoff.py` (`Backoff`), `_wire.py` (encoding, decoding, request
  ids), `_completion.py`, `_types.py` and `_errors.py`;
- the I/O, on Trio and websockets: `_client.py` (`WebSocketClient`, the public face),
  `_supervisor.py` (connect, reconnect, events, state), `_session.py` (one connection's reader,
  writer, heartbeat and token refresh), `_sync.py` (waiting), `_fatal.py` (which errors stop
  the client) and `_options.py` (the constructor's checks).
"""

from ._backoff import Backoff as Backoff
from ._client import WebSocketClient as WebSocketClient
from ._errors import ClientClosed as ClientClosed
from ._errors import ClientError as ClientError
from ._errors import HeartbeatTimeout as HeartbeatTimeout
from ._errors import ProtocolViolation as ProtocolViolation
from ._errors import QueueFull as QueueFull
from ._errors import ReceiveOverflow as ReceiveOverflow
from ._errors import ServerError as ServerError
from ._fatal import DEFAULT_FATAL_CLOSE_CODES as DEFAULT_FATAL_CLOSE_CODES
from ._fatal import DEFAULT_RETRYABLE_HTTP_STATUSES as DEFAULT_RETRYABLE_HTTP_STATUSES
from ._fatal import default_is_fatal as default_is_fatal
from ._types import EVENT_TYPES as EVENT_TYPES
from ._types import ClientEvent as ClientEvent
from ._types import ClientState as ClientState
from ._types import ClientStats as ClientStats
from ._types import ConnectHook as ConnectHook
from ._types import ConnectInfo as ConnectInfo
from ._types import EventType as EventType
from ._types import HeadersLike as HeadersLike
from ._types import HeadersProvider as HeadersProvider
from ._types import Listener as Listener
from ._types import Message as Message
from ._types import OverflowPolicy as OverflowPolicy
from ._types import ReceiveOverflowPolicy as ReceiveOverflowPolicy
from ._types import TokenProvider as TokenProvider

# What `from trio_rt.client import *` gives (unchanged since the client was one module); the type
# aliases above are importable too, for annotations.
__all__ = [
    "DEFAULT_FATAL_CLOSE_CODES",
    "DEFAULT_RETRYABLE_HTTP_STATUSES",
    "Backoff",
    "ClientClosed",
    "ClientError",
    "ClientEvent",
    "ClientState",
    "ClientStats",
    "ConnectInfo",
    "EventType",
    "HeartbeatTimeout",
    "OverflowPolicy",
    "ProtocolViolation",
    "QueueFull",
    "ReceiveOverflow",
    "ReceiveOverflowPolicy",
    "ServerError",
    "WebSocketClient",
    "default_is_fatal",
]
