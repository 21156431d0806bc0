"""trio_rt leans on websockets internals: this fails loudly when they change.

`trio_rt/_transport/ws_connection.py` mirrors websockets 17.x's `ServerConnection.handshake`
and extends a few of its methods; `_engine/connection.py` writes under websockets' send lock and
frames through its sans-IO protocol; `_transport/assembler.py` replaces its Trio `Assembler`;
`_core/outbox.py` compresses frames as its permessage-deflate does. pyproject.toml pins
websockets to the range tested (``>=17.0,<18``). When a new websockets is tried:

1. `test_the_mirrored_upstream_code_is_unchanged` names each upstream function or class
   whose code changed (docstrings, comments and formatting are ignored) and what to re-check
   in trio_rt; re-check it, run the whole suite, then put the new hash in `MIRRORED`.
2. `test_the_undocumented_attributes_trio_rt_uses_exist` checks, on a live connection, every
   undocumented attribute trio_rt reads or writes (`ATTRIBUTES` says where).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import textwrap
from typing import Any

import websockets

from ..conftest import client

# upstream object -> (hash of its code, what trio_rt mirrors or assumes: re-check it)
MIRRORED: dict[str, tuple[str, str]] = {
    "websockets.trio.server.ServerConnection.handshake": (
        "71890b5afb28dd36",
        "_ws_connection._ServerConnection.handshake copies it step by step (hooks, errors, the "
        "503 while closing, send_context) except how it waits for the request",
    ),
    "websockets.trio.server.ServerConnection.__init__": (
        "1d671cb8659603e8",
        "_ServerConnection.__init__ sets the same attributes without calling it (server, "
        "request_rcvd)",
    ),
    "websockets.trio.server.ServerConnection.process_event": (
        "d126553c3501058d",
        "_ServerConnection.process_event: pongs reach the heartbeat first; request_rcvd is set "
        "here upstream; frames go to Connection.process_event directly (the handshake sets "
        "request back to None once open, and upstream tells the request from frames by it)",
    ),
    "websockets.trio.server.serve": (
        "66f903e6d7310198",
        "_ws_connection.start_websockets_server's serve_stream is its connection handler "
        "(same steps and outcomes: the nursery, open_timeout as the scope's deadline, "
        "ServerProtocol and the connection built alike, the handshake, all_connections, "
        "`async with connection`, aclose_forcefully on failure) for trio_rt's settings",
    ),
    "websockets.trio.server.Server": (
        "d4c9e6479d4f968c",
        "start_websockets_server builds it (listeners, a stream handler, a logger) and starts "
        "serve_forever; reads all_connections and closing; aclose(close_connections=False)",
    ),
    "websockets.trio.connection.Connection.__init__": (
        "b63ee2b453144b9a",
        "_ServerConnection.__init__ sets the same attributes without calling it, except: "
        "LightAssembler for recv_messages (max_queue as high/low, pause_reading, "
        "resume_reading), _LazyLock for send_lock, no recv_events task",
    ),
    "websockets.trio.connection.Connection.recv_events": (
        "9fe162d17df23124",
        "_ServerConnection.read_events is one pass of its loop, then its end (same steps, "
        "errors, order); Connection.run calls it in the handler task instead",
    ),
    "websockets.trio.connection.Connection.recv": (
        "d7b53c4e569f9a80",
        "Connection._handle_messages: recv fails the connection itself on an invalid message "
        "(too many fragments, bad UTF-8) and raises ConnectionClosed",
    ),
    "websockets.protocol.Protocol.data_to_send": (
        "a86d030f3a673442",
        "_ws_connection.read_events calls send_data only when protocol.writes is not empty "
        "(data_to_send returns that list)",
    ),
    "websockets.protocol.Protocol.parse": (
        "6281082710e979de",
        "_restart_frame_parser: at the top of its loop, waiting in reader.at_eof, it carries "
        "no state, so a new one started replaces it",
    ),
    "websockets.server.ServerProtocol.parse": (
        "312f157acc06f682",
        "_restart_frame_parser: it parses the request, then delegates to Protocol.parse",
    ),
    "websockets.streams.StreamReader.at_eof": (
        "fbfdb471a007eea2",
        "_restart_frame_parser: a parser waiting here has consumed nothing of the next frame",
    ),
    "websockets.trio.connection.Connection.close_stream": (
        "ebab6bc4ed679c4c",
        "_ServerConnection.close_stream sets request_rcvd after it (a handshake never waits "
        "forever)",
    ),
    "websockets.trio.connection.Connection.send_context": (
        "38ec552907f06d30",
        "every write holds send_lock: Connection's writer and direct writes take it too and "
        "check it is free (_connection._can_write_now)",
    ),
    "websockets.trio.connection.Connection.send_data": (
        "c12f3348e59f8971",
        "websockets writes protocol.data_to_send() with stream.send_all under send_lock; "
        "DirectStream.send_all sends pending direct bytes first",
    ),
    "websockets.trio.messages.Assembler": (
        "80484f6b8b685898",
        "_assembler.LightAssembler keeps its contract (put/get/close, flow control, errors)",
    ),
    "websockets.server.ServerProtocol.__init__": (
        "4fed60996788e72e",
        "_ws_connection._ServerProtocol is built without select_subprotocol (no instance "
        "attribute, no closure over the connection: a reference cycle)",
    ),
    "websockets.server.ServerProtocol.process_subprotocol": (
        "69440e9ff9c2f3cb",
        "_ws_connection._ServerProtocol.select_subprotocol overrides the method it calls "
        "(self.select_subprotocol(offered))",
    ),
    "websockets.server.ServerProtocol.accept": (
        "fafd923ddcb369ab",
        "_ws_connection._upgrade_response writes its 101 (headers, order, Date) as bytes; "
        "_upgrade_corked calls process_request as it does and leaves every refusal to it",
    ),
    "websockets.server.ServerProtocol.process_request": (
        "f5aa6834d61528e6",
        "_ws_connection._process_upgrade takes the plain valid requests (its checks passed as "
        "they would pass here, then the same origin, extensions, subprotocol steps) and "
        "leaves every other to it",
    ),
    "websockets.server.ServerProtocol.send_response": (
        "bc0a23fb2e03e1fa",
        "_ws_connection._upgrade_corked does its steps for a 101 (state OPEN, 'connection open' "
        "logged; the bytes corked instead of appended to writes; debug logging -> its path)",
    ),
    "websockets.http11.Response.serialize": (
        "ee43a6a9596275c9",
        "_ws_connection._upgrade_response writes the same bytes (status line, headers, CRLF)",
    ),
    "websockets.http11.Request.parse": (
        "854ce8734004eff9",
        "_upgrade_request.parse_request_head takes what it accepts (GET, HTTP/1.1, ASCII path, "
        "no Transfer-Encoding, Content-Length 0 only) and leaves the rest to it",
    ),
    "websockets.http11.parse_headers": (
        "845cbdf27b5ff426",
        "_upgrade_request.parse_request_head: header lines (name token, colon, value stripped "
        "of spaces and tabs and matching _value_re), at most MAX_NUM_HEADERS, set_insecure",
    ),
    "websockets.http11.parse_line": (
        "580446bf8bd4e43e",
        "_upgrade_request.parse_request_head: lines end with CRLF (a bare LF: left to it), "
        "within MAX_LINE_LENGTH",
    ),
    "websockets.datastructures.Headers.__init__": (
        "38e5bdcfc6fd4bd1",
        "_upgrade_request.parse_request_head fills _dict and _list as set_insecure does",
    ),
    "websockets.datastructures.Headers.set_insecure": (
        "69b30654800b57b7",
        "_upgrade_request.parse_request_head fills _dict and _list as set_insecure does",
    ),
    "websockets.protocol.Protocol.receive_data": (
        "5ee896983b1d2025",
        "_ws_connection._parse_head_here skips it for a request head it parses (it feeds the "
        "reader and steps the parser: ServerProtocol.parse's work, done there)",
    ),
    "websockets.datastructures.Headers.__str__": (
        "0de765e9bb6a1da0",
        "_ws_connection._upgrade_response writes each header as 'name: value\\r\\n'",
    ),
    "websockets.extensions.permessage_deflate.PerMessageDeflate.encode": (
        "72049d8bf8f705f2",
        "_outbox.OutboundMessage.deflated_frame compresses as this does without context "
        "takeover (one compressed frame shared by every connection)",
    ),
}

# Undocumented attributes of websockets objects trio_rt uses: object -> names (and where).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    # _transport/ws_connection.py (handshake, close_stream, process_event, __init__);
    # _engine/connection.py (send_lock, stream: the writer and direct writes).
    "connection": (
        "request_rcvd",
        "recv_messages",
        "pause_reading",
        "resume_reading",
        "send_context",
        "send_lock",
        "stream",
        "close_stream",
        "server",
        "logger",
        "nursery",  # _connection.run starts the writer and the closing task in it
        # _ws_connection.read_events (upstream's recv_events in the handler task).
        "recv_flow_control",
        "close_deadline",
        "close_timeout",
        "set_connection_exc",
        "send_data",
        "debug",
    ),
    # _ws_connection.handshake (server.closing); serve_stream (all_connections).
    "server": ("closing", "all_connections"),
    # _ws_connection.handshake (handshake_exc), _handshake.process_request (logger),
    # _connection (extensions, close_rcvd, close_sent, send_ping/send_text, data_to_send).
    "protocol": (
        "handshake_exc",
        "logger",
        "extensions",
        "close_rcvd",
        "close_sent",
        "send_ping",
        "send_text",
        "data_to_send",
        # _ws_connection.read_events: what data_to_send() would return.
        "writes",
        # _ws_connection._restart_frame_parser.
        "parser",
        "reader",
        "_state",  # _connection.send_encoded reads it per recipient (the `state` property)
    ),
}


def _resolve(name: str) -> Any:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def code_hash(obj: Any) -> str:
    """A hash of `obj`'s code (see `source_hash`)."""
    return source_hash(textwrap.dedent(inspect.getsource(obj)))


def source_hash(source: str) -> str:
    """A hash of Python `source` parsed, docstrings removed, unparsed: comments and formatting
    do not count."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()[:16]


def test_the_mirrored_upstream_code_is_unchanged() -> None:
    changed = []
    for name, (expected, recheck) in MIRRORED.items():
        actual = code_hash(_resolve(name))
        if actual != expected:
            changed.append(f"- {name} (hash {actual}): re-check {recheck}")
    assert not changed, (
        f"websockets {websockets.__version__} changed code trio_rt mirrors or relies on "
        "(tests/engine/test_websockets_internals.py says how to proceed):\n" + "\n".join(changed)
    )


async def test_the_undocumented_attributes_trio_rt_uses_exist(make_manager: Any) -> None:
    manager = make_manager()
    async with manager, client(manager):
        (conn,) = manager.connections.values()
        ws = conn._ws
        objects = {"connection": ws, "server": ws.server, "protocol": ws.protocol}
        missing = [
            f"{kind}.{name}"
            for kind, names in ATTRIBUTES.items()
            for name in names
            if not hasattr(objects[kind], name)
        ]
        assert not missing, f"websockets {websockets.__version__} lacks {missing}"
        # The subprotocol hook is the protocol class's method (see MIRRORED), not an instance
        # attribute closing over the connection (a reference cycle).
        assert "select_subprotocol" not in vars(ws.protocol)


def test_the_fast_request_parse_uses_websockets_patterns() -> None:
    """`_upgrade_request._HEADER` is websockets' header name and value patterns joined."""
    from websockets import http11

    from trio_rt._transport.upgrade_request import _HEADER

    token = http11._token_re.pattern
    value = http11._value_re.pattern
    assert value.endswith(b"*")
    assert _HEADER.pattern == b"(" + token + b"):[ \\t]*(" + value + b")"


def test_the_code_hash_ignores_docstrings_comments_and_formatting() -> None:
    plain = "def f(x):\n    return x + 1\n"
    assert source_hash('def f(x):\n    """Doc."""\n    return (x+1)  # one more\n') == (
        source_hash(plain)
    )
    assert source_hash("def f(x):\n    return x + 2\n") != source_hash(plain)
