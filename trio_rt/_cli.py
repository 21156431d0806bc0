"""The `trio-rt` command: run the demo, serve an app (Ctrl-C and SIGTERM shut down gracefully;
``--workers N``: N processes on one port under a supervisor, ``_cli_workers.py``), or create
trio_rt's Cassandra tables (``trio-rt schema create``)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from ._cli_workers import add_worker_arguments, serve_workers
from ._engine.manager import WebSocketManager
from ._workers import WORKER_ID_ENV

log = logging.getLogger("trio_rt.cli")


async def load_app(spec: str, **options: Any) -> WebSocketManager:
    """Load ``module:attr``: a WebSocketManager, or a callable (sync or async) building one
    from WebSocketManager options. Raises SystemExit with a clear message otherwise."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"trio-rt: expected module:attribute, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"trio-rt: cannot import {module_name!r}: {exc}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"trio-rt: {module_name!r} has no attribute {attr!r}") from None
    if isinstance(obj, WebSocketManager):
        if options:
            obj.options = dataclasses.replace(obj.options, **options)
        return obj
    if callable(obj):
        app = obj(**options)
        if inspect.isawaitable(app):
            app = await app
        if isinstance(app, WebSocketManager):
            return app
    raise SystemExit(f"trio-rt: {spec} is neither a WebSocketManager nor a factory of one")


async def serve_until_signalled(manager: WebSocketManager) -> None:
    """Serve `manager` until Ctrl-C (SIGINT) or SIGTERM, then shut it down gracefully.

    Prints one line once listening (``trio_rt listening on ws://HOST:PORT/ ...``). The first
    signal starts a graceful shutdown (clients get 1001, up to ``shutdown_timeout``) and the
    function returns normally, so a program whose ``main`` ends with it exits 0 without a
    traceback; a second signal cancels what is left of the shutdown. Must run in the main
    thread (signal handlers). Returns as well when the server stops for another reason
    (``manager.stop()``); errors of `serve` propagate.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop_watching(
                task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await manager.serve(task_status=task_status)
                nursery.cancel_scope.cancel()  # serve is over: stop waiting for signals

            host, port = await nursery.start(serve_then_stop_watching)
            # One parseable line: tests and scripts wait for it.
            print(
                f"trio_rt listening on ws://{host}:{port}/ (health: http://{host}:{port}/health)",
                flush=True,
            )
            stopping = False
            async for signum in signals:
                if stopping:
                    nursery.cancel_scope.cancel()
                    break
                stopping = True
                log.warning(
                    "%s: shutting down gracefully (up to %.0f s; again to force)",
                    signal.Signals(signum).name,
                    manager.options.shutdown_timeout,
                )
                manager.stop()


def _load_tables(spec: str) -> list[Any]:
    """``module:attr``: a `Table`, or an iterable of them (the app's own tables)."""
    from .cassandra import Table

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"trio-rt schema: expected module:attribute, got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise SystemExit(f"trio-rt schema: cannot import {module_name!r}: {exc}") from None
    except AttributeError:
        raise SystemExit(f"trio-rt schema: {module_name!r} has no attribute {attr!r}") from None
    tables = [obj] if isinstance(obj, Table) else list(obj) if isinstance(obj, list | tuple) else []
    if not tables or not all(isinstance(t, Table) for t in tables):
        raise SystemExit(f"trio-rt schema: {spec} is neither a Table nor a list of them")
    return tables


def schema_create(args: argparse.Namespace) -> int:
    """``trio-rt schema create``: one connection, `create_schema`, a line per table."""
    try:
        from .cassandra import CassandraError, CassandraSession, create_schema
    except ImportError as exc:
        print(
            f"trio-rt schema: needs cassandra-driver ({exc}): pip install 'trio_rt[cassandra]'",
            file=sys.stderr,
        )
        return 2
    host, _, port_text = args.cassandra.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        print(
            f"trio-rt schema: --cassandra takes HOST:PORT, not {args.cassandra!r}", file=sys.stderr
        )
        return 2
    parts = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
    tables = _load_tables(args.tables) if args.tables else []

    async def run() -> list[str]:
        async with CassandraSession.connect(
            [host], port=int(port_text), connect_timeout=args.connect_timeout
        ) as session:
            options: dict[str, Any] = {"tables": tables}
            if parts is not None:
                options["parts"] = parts
            return await create_schema(
                session, args.keyspace, replication_factor=args.replication_factor, **options
            )

    try:
        made = trio.run(run)
    except LookupError as exc:
        print(f"trio-rt schema: {exc} (--replication-factor N creates it)", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"trio-rt schema: {exc}", file=sys.stderr)
        return 2
    except CassandraError as exc:
        print(f"trio-rt schema: Cassandra at {args.cassandra}: {exc}", file=sys.stderr)
        return 1
    for name in made:
        print(f"{args.keyspace}.{name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio-rt", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the chat demo on the in-memory backends")
    serve = sub.add_parser("serve", help="serve an app given as module:attribute")
    serve.add_argument("app", help="module:attribute (a WebSocketManager or a factory)")
    demo.add_argument(
        "--cassandra",
        default=None,
        metavar="HOST:PORT",
        help="add the live posts board, fed by change notifications from this Cassandra",
    )
    demo.add_argument(
        "--cdc-agent",
        default=None,
        metavar="HOST:PORT",
        help="with --cassandra: the node's CDC agent (docs/cdc.md), so that rows inserted by "
        "cqlsh or any other client reach the board too",
    )
    for p in (demo, serve):
        p.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="port (default 3001; 0 = any)")
    add_worker_arguments(serve)
    schema = sub.add_parser("schema", help="trio_rt's Cassandra tables")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    create = schema_sub.add_parser(
        "create",
        help="create the stream, watcher, room and permission tables (idempotent)",
        description="Create trio_rt's tables in a keyspace (CREATE TABLE IF NOT EXISTS).",
    )
    create.add_argument("--cassandra", required=True, metavar="HOST:PORT")
    create.add_argument("--keyspace", required=True)
    create.add_argument(
        "--replication-factor",
        type=int,
        default=None,
        metavar="N",
        help="create the keyspace if missing (SimpleStrategy); without it, it must exist",
    )
    create.add_argument(
        "--only",
        default=None,
        metavar="PARTS",
        help="comma-separated: streams, watchers, rooms, permissions (default: all)",
    )
    create.add_argument(
        "--tables",
        default=None,
        metavar="MODULE:ATTR",
        help="the app's own tables too: a trio_rt.cassandra.Table or a list of them",
    )
    create.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS")

    args = parser.parse_args(argv)
    worker = os.environ.get(WORKER_ID_ENV) if getattr(args, "supervised", False) else None
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s "
        + (f"worker-{worker} " if worker is not None else "")
        + "%(name)s: %(message)s",
    )
    if args.command == "schema":
        if args.log_level.upper() != "DEBUG":
            # The driver logs a failed connection at ERROR with a traceback; we say it once.
            logging.getLogger("cassandra").setLevel(logging.CRITICAL)
        return schema_create(args)
    options: dict[str, Any] = {}
    if args.host is not None:
        options["host"] = args.host
    if args.port is not None:
        options["port"] = args.port
    if args.command == "demo" and args.cassandra is not None:
        options["cassandra"] = args.cassandra
    if args.command == "demo" and args.cdc_agent is not None:
        if args.cassandra is None:
            parser.error("--cdc-agent needs --cassandra")
        options["cdc_agent"] = args.cdc_agent
    spec = "trio_rt_examples.chat:build_app" if args.command == "demo" else args.app
    if args.command == "serve" and (args.supervised or args.workers > 1):
        return serve_workers(args, spec, options, load_app)

    async def load_and_run() -> None:
        try:
            manager = await load_app(spec, **options)
        except (TypeError, ValueError) as exc:  # bad options: a usage error
            raise SystemExit(f"trio-rt: {exc}") from None
        except ImportError as exc:  # e.g. --cassandra without the `cassandra` extra
            raise SystemExit(f"trio-rt: {exc}") from None
        await serve_until_signalled(manager)

    try:
        trio.run(load_and_run)
    except OSError as exc:  # e.g. the port is taken
        print(f"trio-rt: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        # Ctrl-C before the signal handlers were in place (start-up): no traceback for it.
        if isinstance(exc, BaseExceptionGroup):
            rest = exc.split(KeyboardInterrupt)[1]
            if rest is not None:
                raise
        print("trio-rt: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
