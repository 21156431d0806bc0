"""The benchmarks still run: every module imports, and the main harnesses complete a tiny run
against their peers (numbers are not looked at: speed is measured in benchmarks/, never
asserted in tests). The table (`benchmarks.table --quick`) runs against each peer it can build:
Node's ws and Go's gorilla/websocket are built into the cache first (benchmarks/peers/), and
skipped, saying why, only where node/npm or go are not installed."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import peers, table
from trio_rt.testing.services import CassandraEndpoint

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__",))
MODULES.append("peers")
SERVERS = sorted(p.stem for p in (ROOT / "benchmarks" / "servers").glob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name: str) -> None:
    importlib.import_module(f"benchmarks.{name}")


@pytest.mark.parametrize("name", SERVERS)
def test_benchmark_server_script_compiles(name: str) -> None:
    path = ROOT / "benchmarks" / "servers" / f"{name}.py"
    compile(path.read_text(), str(path), "exec")


def run(args: list[str], tmp_path: Path, **env: str) -> dict[str, object]:
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, "-m", *args, "--json", str(out)] if "--json" not in args else args,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data: dict[str, object] = json.loads(out.read_text())
    return data


@pytest.mark.slow
def test_fanout_harness_runs_against_its_peer(tmp_path: Path) -> None:
    data = run(["benchmarks.fanout", "--clients", "5", "--messages", "20", "--runs", "1"], tmp_path)
    assert data["benchmark"] == "fanout"


@pytest.mark.slow
@pytest.mark.parametrize("peer", [label for label in table.CONTENDERS if label != "trio_rt"])
def test_table_quick_mode_runs_trio_rt_against(peer: str, tmp_path: Path) -> None:
    """Every measure of the table (burst, paced, setup, idle memory; deflate for trio_rt)
    completes for trio_rt and `peer`, with the peer built by the harness's own setup."""
    external = table.CONTENDERS[peer].peer
    if external is not None and (problem := external.missing()) is not None:
        pytest.skip(f"{problem}: install it to benchmark against this peer")
    data = run(["benchmarks.table", "--quick", "--servers", f"trio_rt,{peer}"], tmp_path)
    assert data["benchmark"] == "table"
    runs = data["runs"]
    assert isinstance(runs, dict)
    for label in ("trio_rt", peer):
        for measure in ("burst", "paced"):
            mine = [r for r in runs[measure] if r["label"] == label]
            assert [r["completed"] for r in mine] == [True], (measure, mine)
        idle = [r for r in runs["memory"] if r["label"] == label and r["measure"] == "memory"]
        assert [r["connected"] for r in idle] == [100]
    deflate = [r for r in runs["memory"] if r["measure"] == "memory_deflate"]
    assert [(r["label"], r["connected"]) for r in deflate] == [("trio_rt", 100)]
    assert (tmp_path / "result.txt").read_text().count("setup: server CPU ms/connection") == 1


def test_table_ratios_and_targets_from_medians() -> None:
    """The summary divides the subject's medians by each peer's and checks issue 15's targets
    against those ratios (synthetic runs: no server is started)."""

    def fan(label: str, measure: str, dps: float, cpu: float, p50_us: float) -> dict[str, Any]:
        return {
            "label": label,
            "measure": measure,
            "deliveries_per_s": dps,
            "server_cpu_us_per_delivery": cpu,
            "latency_p50_us": p50_us,
            "latency_p99_us": 2 * p50_us,
            "setup_cpu_us_per_connection": 1000.0 if label == "trio_rt" else 800.0,
            "completed": True,
            "noisy": False,
            "other_busy_cores": 0.1,
            "clients": 200,
            "rate": 200.0 if measure == "paced" else 0.0,
        }

    def idle(label: str, phase: str, kib: float) -> dict[str, Any]:
        return {
            "label": label,
            "measure": phase,
            "kib_per_conn": kib,
            "server_cpu_us_per_open": 500.0,
        }

    runs = {
        "burst": [
            fan("trio_rt", "burst", 300_000, 3.0, 900),
            fan("websockets", "burst", 100_000, 9.0, 800),
        ],
        "paced": [
            fan("trio_rt", "paced", 40_000, 12.0, 500),
            fan("websockets", "paced", 30_000, 15.0, 400),
        ],
        "memory": [
            idle("trio_rt", "memory", 18.0),
            idle("websockets", "memory", 16.0),
            idle("trio_rt", "memory_deflate", 40.0),
        ],
    }
    summary = table.summarize(runs, ["trio_rt", "websockets"])
    ratios = summary["ratios"]
    assert ratios["burst_deliveries_per_s"] == {"websockets": 3.0}
    assert ratios["burst_cpu_us"] == {"websockets": 3.0 / 9.0}
    assert ratios["setup_cpu_ms"] == {"websockets": 1.25}
    assert ratios["idle_kib_deflate"] == {}  # the peers' deflate phase is not run
    targets = summary["targets"]
    assert targets["burst_deliveries_per_s"]["met"] is True  # 3.0 >= 1.5
    assert targets["setup_cpu_ms"]["met"] is False  # 1.25 > 1.2
    assert targets["idle_kib"] == {"target": "<= 12", "value": 18.0, "met": False}
    assert "burst_cpu_us" not in targets  # go_gorilla is not in this run
    # the paced load (200 clients x 200/s = 40,000/s): websockets delivered 30,000/s
    assert summary["flags"]["websockets"] == {
        "fan_out_runs": 2,
        "incomplete": 0,
        "noisy": 0,
        "paced_runs": 1,
        "saturated": 1,
    }
    text = table.render(summary, table.parse_args(["--runs", "1"]), ["trio_rt", "websockets"])
    assert "NOT met" in text and ">= 1.5x websockets: met" in text


def test_an_external_peer_without_its_tools_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert peers.NODE_WS.missing() == (
        "the node_ws peer needs node and npm on PATH (not found: node, npm)"
    )
    with pytest.raises(peers.PeerUnavailable, match="needs go on PATH"):
        peers.GO_GORILLA.build()


@pytest.mark.slow
def test_change_latency_runs_on_real_services(
    tmp_path: Path, cassandra_endpoint: CassandraEndpoint, redis_url: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.change_latency",
            "--count",
            "10",
            "--rate",
            "50",
            "--subscribers",
            "2",
            "--writers",
            "2",
            "--burst",
            "5",
            "--cassandra",
            f"{cassandra_endpoint.host}:{cassandra_endpoint.port}",
            "--redis",
            redis_url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert '"skipped_holes": 0' in result.stdout


def test_a_before_tree_server_runs_that_trees_trio_rt(tmp_path: Path) -> None:
    """`benchmarks.table --before TREE` runs trio_rt@before's servers through
    `benchmarks.servers.other_tree`: the server module and the trio_rt it imports come from
    TREE, not from this checkout (nor from its editable install)."""
    tree = tmp_path / "tree"
    (tree / "trio_rt").mkdir(parents=True)
    (tree / "trio_rt" / "__init__.py").write_text("WHERE = 'other tree'\n")
    (tree / "benchmarks" / "servers").mkdir(parents=True)
    (tree / "benchmarks" / "__init__.py").write_text("")
    (tree / "benchmarks" / "servers" / "__init__.py").write_text("")
    (tree / "benchmarks" / "servers" / "probe.py").write_text(
        "import sys, trio_rt\nprint(trio_rt.WHERE, trio_rt.__file__, sys.argv[1:])\n"
    )
    shim = ["-m", "benchmarks.servers.other_tree", "--tree", str(tree)]
    done = subprocess.run(
        [sys.executable, *shim, "--module", "benchmarks.servers.probe", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(" ", 2)[:2] == ["other", "tree"]
    assert str(tree / "trio_rt" / "__init__.py") in done.stdout
    assert "['--port', '0']" in done.stdout
    # a module this checkout has and the other tree lacks is not found there
    missing = subprocess.run(
        [sys.executable, *shim, "--module", "trio_rt._engine.manager"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0
    assert "No module named 'trio_rt._engine'" in missing.stderr
