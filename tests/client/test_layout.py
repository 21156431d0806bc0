"""The client package's shape: the public names `trio_rt.client` always exported, a sans-IO
half that imports no I/O library, modules of a readable size, and typed constructor keywords."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import trio_rt.client
from trio_rt.client import Backoff, WebSocketClient
from trio_rt.client._options import ClientOptions

PACKAGE = Path(trio_rt.client.__file__).resolve().parent

# `from trio_rt.client import ...` of every name the one-module client exported.
EXPORTED = {
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
}
# Type aliases the module defined for annotations (importable, not in __all__).
ALIASES = {
    "EVENT_TYPES",
    "ConnectHook",
    "HeadersLike",
    "HeadersProvider",
    "Listener",
    "Message",
    "TokenProvider",
}

# The sans-IO half: decisions and bookkeeping, tested without sockets (tests/client/).
SANS_IO = {
    "_backoff.py",
    "_buffers.py",
    "_completion.py",
    "_errors.py",
    "_positions.py",
    "_queries.py",
    "_state.py",
    "_types.py",
    "_wire.py",
}
IO_LIBRARIES = ("trio", "websockets", "socket", "ssl", "asyncio", "anyio")
# What the sans-IO half may read of an I/O library: exception types (no I/O in them).
ALLOWED_IO_IMPORTS = {("_errors.py", "websockets.exceptions")}


def test_every_public_name_still_imports_from_trio_rt_client() -> None:
    assert set(trio_rt.client.__all__) == EXPORTED
    namespace: dict[str, object] = {}
    exec("from trio_rt.client import *", namespace)
    assert set(namespace) >= EXPORTED
    for name in EXPORTED | ALIASES:
        assert getattr(trio_rt.client, name) is not None, name


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            names.add("." + node.module)
    return names


def test_the_sans_io_half_imports_no_io_library() -> None:
    found = []
    for name in sorted(SANS_IO):
        for module in imported_modules(PACKAGE / name):
            if module.split(".")[0] in IO_LIBRARIES and (name, module) not in ALLOWED_IO_IMPORTS:
                found.append(f"{name}: {module}")
            sibling = module[1:] + ".py" if module.startswith(".") else None
            if sibling is not None and sibling not in SANS_IO:
                found.append(f"{name}: {module} (an I/O module of the client)")
    assert not found, found


def test_no_module_of_the_client_is_over_700_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 700, sizes


def test_the_constructor_takes_typed_keywords_only() -> None:
    """mypy checks what callers pass: explicit, annotated keywords (no **options: Any), each
    one a setting of ClientOptions or of the Backoff schedule, or the random generator."""
    parameters = inspect.signature(WebSocketClient.__init__).parameters
    kinds = {p.kind for name, p in parameters.items() if name not in ("self", "url")}
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}
    assert all(
        p.annotation != inspect.Parameter.empty for n, p in parameters.items() if n != "self"
    )
    settings = {f.name for f in dataclasses.fields(ClientOptions)} - {"urls"}
    settings |= {f.name for f in dataclasses.fields(Backoff)} | {"rng"}
    assert set(parameters) - {"self", "url"} == settings
