"""``python -m trio_rt.cdc build|command|run``: the CDC agent from a shell (docs/cdc.md).

- ``build [--cassandra-version V]``: compile the agent with Maven (once) and print the jar;
- ``command --lib DIR --cassandra-yaml FILE --state-dir DIR [--port P] [-- AGENT FLAGS]``:
  print the ``java`` command line of one agent run (for a systemd unit: restart it when it
  exits, at once on status 75);
- ``run`` (same arguments): run the agent in the foreground, restarting it as `CdcAgent`
  does, until interrupted.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from ._agent import CdcAgent, agent_command, ensure_agent_jar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_rt.cdc", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the agent jar")
    build.add_argument("--cassandra-version")
    for name in ("command", "run"):
        p = sub.add_parser(name)
        p.add_argument("--cassandra-version", help="the node's Cassandra version (5.0.x)")
        p.add_argument("--lib", type=Path, required=True, help="the node's lib dir (its jars)")
        p.add_argument(
            "--cassandra-yaml", type=Path, required=True, help="the node's cassandra.yaml"
        )
        p.add_argument("--state-dir", type=Path, required=True, help="where the checkpoint lives")
        p.add_argument("--port", type=int, default=9044)
        p.add_argument("agent_flags", nargs="*", help="agent flags after --, e.g. -- --poll-ms 5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "build":
        print(ensure_agent_jar(args.cassandra_version))
        return 0
    flags = args.agent_flags
    options = {flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags) - 1, 2)}
    if args.command == "command":
        jar = ensure_agent_jar(args.cassandra_version)
        command = agent_command(
            jar, args.lib, args.cassandra_yaml, args.state_dir, port=args.port, options=options
        )
        print(shlex.join(command))
        return 0
    agent = CdcAgent.start(
        args.lib,
        args.cassandra_yaml,
        args.state_dir,
        version=args.cassandra_version,
        port=args.port,
        options=options,
    )
    print(
        f"CDC agent listening on {agent.host}:{agent.port}; log: {agent.log_path}", file=sys.stderr
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
