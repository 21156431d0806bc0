"""Developer sessions. `./dev` covers the same ground without nox (README)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHONS = ["3.11", "3.12", "3.13"]


def install(session: nox.Session) -> None:
    session.install("--only-binary", "cassandra-driver", "-e", ".[dev]")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite; Redis and Cassandra are started by the test fixtures when needed."""
    install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    install(session)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """One table, trio_rt against websockets, python-socketio, Node's ws and Go's
    gorilla/websocket (`python -m benchmarks.table`; Node and Go peers are built into a cache
    first). `nox -s bench -- --quick` for a smoke run; docs/performance.md."""
    session.install("--only-binary", "cassandra-driver", "-e", ".[dev,bench]")
    session.run("python", "-m", "benchmarks.table", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    install(session)
    session.run("trio-rt", "demo", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs.yml): `mkdocs build --strict`, into build/site."""
    install(session)
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def services(session: nox.Session) -> None:
    """`nox -s services -- up|down|status`: real Redis and Cassandra for development."""
    install(session)
    session.run("python", "-m", "trio_rt.testing.services", *(session.posargs or ["up"]))
