"""``trio-rt serve --workers N``: the command-line side of ``_workers.py``.

`add_worker_arguments` adds the options to ``serve``; `serve_workers` runs either the
supervisor (``--workers N`` with N > 1) or one worker (``--supervised``, the flag the supervisor
gives the processes it starts; not for people). ``--workers 1`` (and no ``--workers``) is one
process without a supervisor, as before.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ._core.checks import int_problem, number_problem
from ._workers import (
    DEFAULT_MAX_START_FAILURES,
    EX_CONFIG,
    WORKER_ID_ENV,
    RestartPolicy,
    Supervisor,
    parse_option,
    parse_workers,
    serve_worker,
    shareable_problem,
    supervisor_problem,
    worker_options,
)

if TYPE_CHECKING:
    from ._engine.manager import WebSocketManager

LoadApp = Callable[..., Awaitable["WebSocketManager"]]
T = TypeVar("T")


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser that raises ValueError (its message is the error)."""

    def typed(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return typed


def add_worker_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--workers",
        type=_argument(parse_workers),
        default=1,
        metavar="N",
        help="N processes on one port (SO_REUSEPORT, Linux) under a supervisor that restarts "
        "them; 'auto' = one per core; the app must use shared backends (RedisBroker...). "
        "Default: 1, a single process without supervisor",
    )
    serve.add_argument(
        "--drain-timeout",
        type=_argument(
            partial(
                parse_option, "--drain-timeout", convert=float, check=number_problem, hint="seconds"
            )
        ),
        default=30.0,
        metavar="SECONDS",
        help="with --workers: after SIGTERM, how long the workers may take to shut down "
        "gracefully before they are killed (default 30)",
    )
    serve.add_argument(
        "--max-start-failures",
        type=_argument(
            partial(parse_option, "--max-start-failures", convert=int, check=int_problem)
        ),
        default=DEFAULT_MAX_START_FAILURES,
        metavar="N",
        help="with --workers: give up when a worker fails to start N times in a row "
        f"(default {DEFAULT_MAX_START_FAILURES})",
    )
    serve.add_argument(
        "--allow-memory-backends",
        action="store_true",
        help="with --workers: run even if the app keeps rooms or history in memory (each "
        "worker then has its own: only for apps whose workers share nothing)",
    )
    serve.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)


def serve_workers(
    args: argparse.Namespace, spec: str, options: dict[str, Any], load_app: LoadApp
) -> int:
    """The supervisor (``--workers N``, N > 1) or one of its workers (``--supervised``)."""
    if args.supervised:
        return _serve_one_worker(args, spec, options, load_app)
    problem = supervisor_problem(args.workers)
    if problem is not None:
        print(f"trio-rt: {problem}; run --workers 1 behind a load balancer", file=sys.stderr)
        return 2
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        print(f"trio-rt: expected module:attribute, got {spec!r}", file=sys.stderr)
        return 2
    supervisor = Supervisor(
        spec,
        args.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        drain_timeout=args.drain_timeout,
        policy=RestartPolicy(max_start_failures=args.max_start_failures),
        allow_memory_backends=args.allow_memory_backends,
    )
    return trio.run(supervisor.run)


def _serve_one_worker(
    args: argparse.Namespace, spec: str, options: dict[str, Any], load_app: LoadApp
) -> int:
    try:
        worker_id = int(os.environ[WORKER_ID_ENV])
    except (KeyError, ValueError):
        print(f"trio-rt: --supervised needs ${WORKER_ID_ENV} (a worker number)", file=sys.stderr)
        return 2
    options = {**options, "reuse_port": True, "worker_id": worker_id}

    async def run() -> int:
        try:
            manager = await load_app(spec, **options)
        except SystemExit as exc:  # load_app's clear message
            print(exc, file=sys.stderr)
            return EX_CONFIG
        except (TypeError, ValueError, ImportError) as exc:
            print(
                f"trio-rt: {exc} (with --workers, a factory gets reuse_port= and worker_id= "
                "too: take **options and pass them on to WebSocketManager)",
                file=sys.stderr,
            )
            return EX_CONFIG
        worker_options(manager, worker_id, args.host, args.port)
        problem = None if args.allow_memory_backends else shareable_problem(manager)
        if problem is not None:
            print(f"trio-rt: --workers: {problem}", file=sys.stderr)
            return EX_CONFIG
        try:
            await serve_worker(manager)
        except Exception as exc:
            bind_error = _bind_error(exc)
            if bind_error is None:
                raise
            o = manager.options
            print(f"trio-rt: cannot listen on {o.host}:{o.port}: {bind_error}", file=sys.stderr)
            return EX_CONFIG
        return 0

    return trio.run(run)


def _bind_error(exc: BaseException) -> OSError | None:
    """The OSError that says the address cannot be bound (taken, not ours, not here), also
    inside the exception groups of the server's nurseries; None for anything else."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _bind_error(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, OSError) and exc.errno in (
        errno.EADDRINUSE,
        errno.EACCES,
        errno.EADDRNOTAVAIL,
    ):
        return exc
    return None
