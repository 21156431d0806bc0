"""The benchmarks still run: every module imports, and the main harnesses complete a tiny run
against their peers (numbers are not looked at: speed is measured in benchmarks/, never
asserted in tests)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trio_rt.testing.services import CassandraEndpoint

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__",))
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
