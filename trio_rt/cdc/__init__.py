"""Cassandra's own CDC as a change source: the agent beside each node, and its wire format.

The *agent* (``trio_rt/cdc/agent/``, Java) runs beside one Cassandra node with
``cdc_enabled: true``: it follows the node's ``cdc_raw`` directory with Cassandra's commit-log
classes and hands every change of a table created or altered ``WITH cdc = true`` to one
consumer over a local TCP socket, as JSON lines, keeping a durable checkpoint of what the
consumer acknowledged and deleting the segments it has passed. The consumer is
``trio_rt.cassandra.CdcSource`` (it stores each change in the stream ``table:<name>``, where
watchers and subscriptions read it). docs/cdc.md has the setup, the wire format and the
guarantees.

Stdlib only (no trio, no driver):

* :func:`ensure_agent_jar` builds the agent with Maven against a Cassandra version, once;
* :func:`agent_command` is its command line; :class:`CdcAgent` runs and supervises it;
* ``python -m trio_rt.cdc build|command|run`` does the same from a shell (operators);
* :mod:`._wire` (re-exported here) parses and checks the agent's messages, sans-IO.
"""

from ._agent import AGENT_MAIN, EXIT_SCHEMA_CHANGED, CdcAgent, agent_command, ensure_agent_jar
from ._wire import (
    PROTOCOL,
    AgentBatch,
    AgentHello,
    AgentStats,
    CdcChange,
    LineReader,
    WireError,
    change_id,
    encode_ack,
    parse_message,
)

__all__ = [
    "AGENT_MAIN",
    "EXIT_SCHEMA_CHANGED",
    "PROTOCOL",
    "AgentBatch",
    "AgentHello",
    "AgentStats",
    "CdcAgent",
    "CdcChange",
    "LineReader",
    "WireError",
    "agent_command",
    "change_id",
    "encode_ack",
    "ensure_agent_jar",
    "parse_message",
]
